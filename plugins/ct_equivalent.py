"""The ``ct-equivalent`` pass: run a known constant-time equivalent of a whole function.

Some secret-dependent code cannot be rewritten block by block: OpenSSL's sliding-window
``BN_mod_exp_mont`` branches on exponent bits around calls, and glibc's ``memcmp`` returns at
the first difference from hand-written SSE2 code.  Both have constant-time equivalents that
compute the same result from the same arguments, and this pass runs those instead.  The
region is the whole function (``kind = "function"``, ``at`` its entry); the rewrite replaces
its entry, so every call, direct or through a pointer, runs the equivalent.

Two kinds of equivalent (:data:`EQUIVALENTS`, keyed by the function's symbol name):

- :class:`Redirect`: jump to another function of the same module with the same arguments
  and result.  ``BN_mod_exp_mont`` → ``BN_mod_exp_mont_consttime`` is OpenSSL's own choice:
  ``BN_mod_exp_mont`` calls it itself when an operand has ``BN_FLG_CONSTTIME``.
- :class:`Body`: our own code, for one implementation only.  Its ``fingerprint`` is the
  SHA-256 of the original's instructions (:func:`fingerprint`); a function of that name with
  other code (another glibc version) is refused, because the equivalence was verified
  (tests/unit/plugins/test_ct_equivalent.py: every size 0-300 and every first-difference
  position against the original, in the emulator) against that code only.

Equivalence is at the calling convention: the return value, memory, callee-saved registers
and RSP are the original's; caller-saved registers and flags may differ, as between any
two implementations of a function.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from leakdbt.plugin_api import (
    API_VERSION,
    ContractView,
    ProfileView,
    Refusal,
    RegionView,
    Rewrite,
    goto,
)

__all__ = ["EQUIVALENTS", "PASS", "Body", "Redirect", "fingerprint"]


@dataclass(frozen=True)
class Redirect:
    """Run ``target``, a function of the same module with the same signature and result."""

    target: str
    why: str


@dataclass(frozen=True)
class Body:
    """Run ``lines`` (Intel syntax, local labels, ending in ``ret``) instead of the function
    whose instructions hash to ``fingerprint``."""

    lines: tuple[str, ...]
    fingerprint: str
    why: str


# glibc 2.36+'s __memcmp_sse2 (sysdeps/x86_64/multiarch/memcmp-sse2.S), for a size n in rdx:
# n = 0 returns 0; n = 1, and n > 16, return a[i] - b[i] at the first differing byte i
# (0 if none); 4 <= n <= 16 return -1, 0 or 1 (a bswap'ed compare); n = 2, 3 return a
# branch-free formula of the first two and the last byte.  The same here, with a fixed
# scan over all n bytes instead of the early exits: which path runs depends on n only.
MEMCMP_SSE2 = (
    "cmp rdx, 1",
    "jb ce_zero",
    "je ce_one",
    "cmp rdx, 3",
    "jbe ce_short",
    "xor eax, eax",  # a[i] - b[i] at the first difference so far (0: none yet)
    "xor ecx, ecx",
    "ce_scan:",
    "movzx r8d, byte ptr [rdi + rcx]",
    "movzx r9d, byte ptr [rsi + rcx]",
    "sub r8d, r9d",
    "test eax, eax",
    "cmovne r8d, eax",  # an earlier difference wins
    "mov eax, r8d",
    "inc rcx",
    "cmp rcx, rdx",
    "jb ce_scan",
    "cmp rdx, 16",
    "ja ce_done",
    "test eax, eax",  # 4 <= n <= 16: the sign, as -1, 0 or 1
    "setne r8b",
    "movzx r8d, r8b",
    "sar eax, 31",
    "or eax, r8d",
    "ce_done:",
    "ret",
    "ce_zero:",
    "xor eax, eax",
    "ret",
    "ce_one:",
    "movzx eax, byte ptr [rdi]",
    "movzx ecx, byte ptr [rsi]",
    "sub eax, ecx",
    "ret",
    "ce_short:",  # n = 2 or 3: the original's own formula (it has no branch on the data)
    "movzx eax, word ptr [rdi]",
    "movzx ecx, word ptr [rsi]",
    "bswap eax",
    "bswap ecx",
    "shr eax, 1",
    "shr ecx, 1",
    "movzx r8d, byte ptr [rdi + rdx - 1]",
    "movzx r9d, byte ptr [rsi + rdx - 1]",
    "or eax, r8d",
    "or ecx, r9d",
    "sub eax, ecx",
    "ret",
)

EQUIVALENTS: dict[str, Redirect | Body] = {
    "BN_mod_exp_mont": Redirect(
        "BN_mod_exp_mont_consttime",
        "OpenSSL's fixed-window exponentiation with scattered precomputation; "
        "BN_mod_exp_mont calls it itself for BN_FLG_CONSTTIME operands"),
    "__memcmp_sse2": Body(
        MEMCMP_SSE2, "a93135565ec4533cb6f46754ed64f813d2e26abeac69cb2a0c52f609abb55b8f",
        "glibc 2.36's SSE2 memcmp, as a scan over all n bytes with the same results"),
}
"""Known constant-time equivalents, by function symbol name (docs/passes.md lists them)."""


def fingerprint(region: RegionView) -> str:
    """SHA-256 of the function's instructions (offset from the entry and bytes), which does
    not depend on where the module is linked or loaded."""
    h = hashlib.sha256()
    for insn in region.instructions():
        h.update((insn.address - region.entry).to_bytes(8, "little", signed=True))
        h.update(insn.raw)
    return h.hexdigest()


class ConstantTimeEquivalent:
    """The ``ct-equivalent`` pass (see the module docstring)."""

    name = "ct-equivalent"
    api_version = API_VERSION
    # The whole function is replaced: it goes first, before any pass that works on part of
    # the code it replaces.
    before: tuple[str, ...] = ("bounded-loop", "if-conversion", "ct-division",
                               "oblivious-table", "fp-ftz-daz")
    after: tuple[str, ...] = ()

    def applies(self, region: RegionView, contract: ContractView, profile: ProfileView) -> bool:
        """Whole-function regions only."""
        return region.shape == "function"

    def harden(self, region: RegionView, contract: ContractView, profile: ProfileView
               ) -> Rewrite | Refusal:
        """A jump to the equivalent, or its body; refused for a function it does not know."""
        for name in region.names:
            known = EQUIVALENTS.get(name)
            if isinstance(known, Redirect):
                target = region.function_address(known.target)
                if target is None:
                    return Refusal(f"{name}'s equivalent {known.target} is not in the module")
                return Rewrite(code=(f"jmp {goto(target)}",))
            if isinstance(known, Body):
                if fingerprint(region) != known.fingerprint:
                    return Refusal(f"{name} is not the implementation the equivalent was "
                                   "verified against (its code differs)")
                return Rewrite(code=known.lines)
        names = ", ".join(region.names) or region.name
        return Refusal(f"no constant-time equivalent is known for {names} (known: "
                       f"{', '.join(sorted(EQUIVALENTS))})")


PASS = ConstantTimeEquivalent()
