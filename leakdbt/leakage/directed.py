"""Directed trials: secrets derived from the comparisons a trial ran, so that trials reach
the other side of equality tests that random secrets practically never pass.

Input-to-state correspondence (as the REDQUEEN fuzzer, Aschermann et al., NDSS 2019):
while the scope runs, :class:`ComparisonRecorder` records the operand values of every
comparison — ``cmp``, ``test``, a ``sub`` feeding a conditional jump, and the vector
compares of ``memcmp``-like code (``pcmpeqb``..., ``ptest``, ``pcmpistri``): their
memory operands and the registers loaded before them hold the compared bytes.  When one
operand's bytes (little- or big-endian) occur in a trial's secret, :func:`derive` makes a
new secret with the *other* operand's bytes copied there: that trial takes the comparison's
other outcome.  :func:`directed_runs` repeats this for a bounded number of rounds, each
from the trials the round before added.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from leakdbt.leakage.findings import DerivedTrial
from leakdbt.machine.hooks import Hook
from leakdbt.machine.machine import Machine
from leakdbt.machine.memory import GuestMemoryFault
from leakdbt.run.scope import FunctionScope
from leakdbt.x86.insn import detail_decoder

SCALAR_COMPARISONS = frozenset({"cmp", "test"})
FLAG_SUBTRACTIONS = frozenset({"sub"})  # a comparison only when a conditional jump follows
VECTOR_COMPARISONS = frozenset({
    "pcmpeqb", "pcmpeqw", "pcmpeqd", "pcmpeqq", "vpcmpeqb", "vpcmpeqw", "vpcmpeqd", "vpcmpeqq",
    "ptest", "vptest", "pcmpistri", "pcmpestri", "vpcmpistri", "vpcmpestri"})
MAX_HITS_PER_SITE = 16  # recorded executions of one comparison instruction per trial
MAX_RECORDED_INSNS = 250_000  # in-scope instructions inspected per trial (bounds the cost)
MAX_OFFSETS = 2  # places in a secret one operand's bytes are copied to
DEFAULT_ROUNDS = 2
DERIVED_PER_ROUND = 4


@dataclass(frozen=True)
class Comparison:
    """One execution of a comparison: where, and each compared operand's bytes."""

    address: int  # runtime address
    location: str  # symbol+offset (lib.so:symbol+offset in a library)
    instruction: str
    operands: tuple[bytes, bytes]


@dataclass(frozen=True)
class _Site:
    """A comparison instruction and how to read the two operands it compares."""

    text: str
    operands: tuple[tuple[str, Any], tuple[str, Any]]  # ("reg", name) / ("mem", ...) / ("imm", v)
    width: int  # bytes compared


class ComparisonRecorder:
    """Records the comparisons run in scope during one run (attach before the guest runs).

    A code hook on every instruction while the scope is active (added at the first entry,
    the engine's translations dropped between two runs so that it applies), removed after
    :data:`MAX_RECORDED_INSNS` instructions."""

    def __init__(self, machine: Machine, scope: FunctionScope,
                 symbolize: Callable[[int], str]) -> None:
        self.machine = machine
        self.symbolize = symbolize
        self.comparisons: list[Comparison] = []
        self._inside = scope.everywhere
        self._hook: Hook | None = None
        self._done = False
        self._inspected = 0
        self._sites: dict[int, _Site | None] = {}
        self._hits: dict[int, int] = {}
        self._locations: dict[int, str] = {}
        machine.resumable = True  # the hook is added between two engine runs (defer)
        scope.before_enter.append(self._before_entry)
        scope.on_enter.append(self._entered)
        scope.on_leave.append(self._left)
        if scope.everywhere:
            self._hook = machine.hooks.on_code(self._on_insn)

    def _before_entry(self, address: int) -> bool:
        """At the first entry: add the hook, and restart the entry's block (translated
        already, without it) retranslated; the scope is entered when it runs again."""
        if self._hook is not None or self._done:
            return False
        self._hook = self.machine.hooks.on_code(self._on_insn)
        self.machine.defer(self.machine.hooks.retranslate)  # stops before the entry runs
        return True

    def _entered(self, address: int) -> None:
        self._inside = True

    def _left(self) -> None:
        self._inside = False

    def _on_insn(self, address: int, size: int) -> None:
        if not self._inside or self._done:
            return
        self._inspected += 1
        if self._inspected > MAX_RECORDED_INSNS:
            self._done = True
            if self._hook is not None:
                self.machine.hooks.remove(self._hook)
            return
        site = self._sites.get(address, _UNSEEN)
        if site is _UNSEEN:
            site = self._sites[address] = self._decode(address, size)
        if site is None or self._hits.get(address, 0) >= MAX_HITS_PER_SITE:
            return
        assert isinstance(site, _Site)
        a, b = (_read(self.machine, kind, what, site.width) for kind, what in site.operands)
        if a is None or b is None or a == b:
            return  # equal operands: this comparison's other outcome needs a difference
        self._hits[address] = self._hits.get(address, 0) + 1
        if address not in self._locations:
            self._locations[address] = self.symbolize(address)
        self.comparisons.append(Comparison(address, self._locations[address], site.text,
                                           (a, b)))

    def _decode(self, address: int, size: int) -> _Site | None:
        try:  # with the next instruction: a sub is a comparison when a jcc follows
            code = self.machine.mem.read(address, size + 15)
        except GuestMemoryFault:  # the code ends at a mapping's end
            code = self.machine.mem.read(address, size)
        decoded = list(detail_decoder().disasm(code, address, 2))
        if not decoded:
            return None
        ci = decoded[0]
        if ci.mnemonic in FLAG_SUBTRACTIONS:
            follows = decoded[1].mnemonic if len(decoded) > 1 else ""
            if not follows.startswith("j") or follows == "jmp":
                return None
        elif ci.mnemonic not in SCALAR_COMPARISONS | VECTOR_COMPARISONS:
            return None
        return comparison_site(ci)


_UNSEEN: Any = object()


def comparison_site(ci: Any) -> _Site | None:
    """How to read the two compared operands of the Capstone instruction ``ci`` (decoded
    with detail), or None when they cannot be read (a segment override, one operand)."""
    from capstone import x86 as cx

    ops = list(ci.operands)
    if ci.mnemonic in VECTOR_COMPARISONS:  # (dst,) src1, src2 (, imm): the last two non-imm
        ops = [op for op in ops if op.type != cx.X86_OP_IMM][-2:]
    if len(ops) != 2:
        return None
    width = max(op.size for op in ops)
    specs: list[tuple[str, Any]] = []
    for op in ops:
        if op.type == cx.X86_OP_REG:
            specs.append(("reg", ci.reg_name(op.reg)))
        elif op.type == cx.X86_OP_IMM:
            specs.append(("imm", op.imm))
        elif op.type == cx.X86_OP_MEM:
            m = op.mem
            if m.segment:
                return None  # fs/gs: the base is not in a general register
            base = ci.reg_name(m.base) if m.base else None
            disp = m.disp + (ci.address + ci.size if base == "rip" else 0)
            specs.append(("mem", (None if base == "rip" else base,
                                  ci.reg_name(m.index) if m.index else None, m.scale, disp)))
        else:
            return None
    return _Site(f"{ci.mnemonic} {ci.op_str}".strip(), (specs[0], specs[1]), width)


def _read(machine: Machine, kind: str, what: Any, width: int) -> bytes | None:
    """An operand's value as ``width`` little-endian bytes (None: unreadable memory)."""
    mask = (1 << 8 * width) - 1
    if kind == "imm":
        return (what & mask).to_bytes(width, "little")
    if kind == "reg":
        return (machine.reg(what) & mask).to_bytes(width, "little")
    base, index, scale, disp = what
    address = disp + (machine.reg(base) if base else 0) \
        + (scale * machine.reg(index) if index else 0)
    try:
        return machine.mem.read(address & ((1 << 64) - 1), width)
    except GuestMemoryFault:  # an unmapped operand: the instruction faults anyway
        return None


Values = tuple[tuple[str, bytes], ...]


Derivation = tuple[int, str, int, bytes]  # comparison, secret, offset, bytes copied
_Candidate = tuple[tuple[bool, int, int], Values, DerivedTrial, Derivation]  # sort key first


def derive(parents: Sequence[tuple[int, Values, Sequence[Comparison]]], known: set[Values],
           first_index: int, limit: int, done: set[Derivation] | None = None
           ) -> list[tuple[Values, DerivedTrial]]:
    """Up to ``limit`` new secret values (not in ``known``, which grows), each a parent's
    secret with one comparison's other operand copied where this operand's bytes are;
    the widest comparisons first (the more bytes match, the likelier they are the secret's).
    One trial per (comparison, secret, offset, bytes copied): ``done`` keeps them across
    rounds.  ``parents``: (trial index, its secret values, the comparisons it ran)."""
    done = set() if done is None else done
    candidates: list[_Candidate] = []
    order = 0
    for parent, values, comparisons in parents:
        for c in comparisons:
            for this, other in (c.operands, c.operands[::-1]):
                for pattern, replacement in _orders(this, other):
                    for k, (name, secret) in enumerate(values):
                        for offset in _offsets(secret, pattern):
                            new = secret[:offset] + replacement + secret[offset + len(pattern):]
                            derived = values[:k] + ((name, new),) + values[k + 1:]
                            order += 1
                            # A run of one repeated byte (zeros...) matches any such run
                            # in a secret: least likely the secret's own bytes, tried last.
                            trivial = len(pattern) > 1 and len(set(pattern)) == 1
                            candidates.append(((trivial, -len(pattern), order), derived,
                                               DerivedTrial(0, parent, name, offset,
                                                            len(pattern), c.location,
                                                            c.instruction),
                                               (c.address, name, offset, replacement)))
    candidates.sort(key=lambda candidate: candidate[0])
    out: list[tuple[Values, DerivedTrial]] = []
    places: set[tuple[int, str, int]] = set()
    # First one trial per (comparison, place in the secret), then the rest: a loop compares
    # the same bytes with many values, and each place deserves a trial before a second one.
    first: list[_Candidate] = []
    rest: list[_Candidate] = []
    for candidate in candidates:
        place = candidate[3][:3]
        (rest if place in places else first).append(candidate)
        places.add(place)
    for _, derived, how, key in first + rest:
        if len(out) >= limit:
            break
        if derived in known or key in done:
            continue
        known.add(derived)
        done.add(key)
        out.append((derived, DerivedTrial(first_index + len(out), how.parent, how.secret,
                                          how.offset, how.length, how.location,
                                          how.instruction)))
    return out


def _orders(this: bytes, other: bytes) -> list[tuple[bytes, bytes]]:
    """The operand pair as compared (little-endian) and byte-reversed (big-endian loads)."""
    pairs = [(this, other)]
    if len(this) > 1 and this[::-1] != this:
        pairs.append((this[::-1], other[::-1]))
    return pairs


def _offsets(secret: bytes, pattern: bytes) -> list[int]:
    """Where ``pattern`` occurs in ``secret`` (at most :data:`MAX_OFFSETS` places)."""
    found: list[int] = []
    at = secret.find(pattern)
    while at >= 0 and len(found) < MAX_OFFSETS:
        found.append(at)
        at = secret.find(pattern, at + 1)
    return found
