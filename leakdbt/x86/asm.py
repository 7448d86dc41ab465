"""Assembling single x86-64 instructions with Keystone, each one verified by Capstone.

The translator writes the code it generates as text in Capstone's Intel syntax.  Keystone 0.9.2
silently mis-encodes some forms, so every instruction it assembles is decoded again with
Capstone at the same address, and the decoding must mean exactly what the text says (compared
in :func:`canonical` form).  An encoding that does not is an :class:`AssemblyError`, never
code that runs; the caller then uses another formulation.

What Keystone 0.9.2 gets wrong (measured; the tests pin each case):

- Absolute memory operands ``[N]``, with or without ``fs:``/``gs:``: a negative N (SIB
  absolute), an N out of rel32 reach of the instruction, and the accumulator's moffs form
  (``mov rax, qword ptr fs:[0x28]``, printed ``movabs``) are right.  Any other N becomes a
  RIP-relative operand, in one of two ways.  ``mov rcx, qword ptr [0x400100]`` and
  ``mov rcx, qword ptr fs:[0x28]`` at 0x400000 put N itself in the displacement
  (``[rip + 0x400100]``: another address).  ``add``/``sub``/``cmp``/``xor``, stores, ``lea`` and
  ``jmp``/``call qword ptr [N]`` get the displacement that reaches N from here
  (``[rip + 0xf9]``; ``fs:[rip - 0x3fffe0]`` with a segment).  That is the same address only
  at this address, so it is refused as well: RIP-relative and absolute operands are kept apart.
- ``[eip + D]`` loses the ``eip`` and becomes ``[rax + D]``.
- EVEX (AVX-512) displacements are not scaled for disp8*N: ``zmmword ptr [rsi + 0x40]`` comes
  out as ``[rsi + 0x1000]``; EVEX-only registers and mask registers are not supported at all.
- A ``jmp``/``call``/``jcc`` target out of rel32 reach wraps silently (``call 0x80500000``
  from 0x400000 lands at 0xffffffff80500000); one beyond 4 GiB, or a ``loop``/``jrcxz`` target
  out of rel8 reach, is a Keystone error.
- ``nop dword ptr [rax]`` is encoded as ``0f 18 /4``, a reserved *prefetch hint* slot, not the
  ``0f 1f /0`` NOP.  Capstone prints both as ``nop``, and the PREFETCHIT0 encoding
  ``0f 18 /7`` too, so a decoded ``nop`` with operands is accepted only as ``0f 1f /0``.
- ``xchg rax, rax`` becomes ``48 90`` and decodes as ``nop``: same effect, different text,
  refused.  ``endbr64``, ``notrack``, CET shadow-stack and some XSAVE forms are unknown to it.
- Malformed text is not always an error: ``[rbx +`` assembles as ``[rbx]`` and ``[rbx`` as the
  absolute ``[0]``.

Correct as far as measured: ``movabs`` (imm64 and moffs); every ``[rip + D]`` operand; the
short (rel8) branch form when the target is near and rel32 otherwise; ``jrcxz``/``loop`` within
reach; ``call``/``jmp`` to an absolute target within ±2 GiB; ``xchg`` (Capstone may print the
operands swapped, which :func:`canonical` allows for).  Re-assembling Capstone's text for the
.text of a static glibc program succeeds for 94% of its instructions and never changes meaning.

Capstone's text is not always unambiguous either: with an address-size (0x67) prefix an absolute
SIB operand ``67 8b 04 25 00 ff ff ff`` (address 0xffffff00) prints as ``[0xffffffffffffff00]``,
like the same bytes without the prefix.  :func:`canonical_insn` therefore reads the prefixes
from the bytes and masks such addresses to 32 bits.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any, Protocol

from leakdbt.errors import TranslationError
from leakdbt.x86.disasm import decode_one

__all__ = [
    "assemble_block",
    "AssemblyError",
    "assemble",
    "assemble_many",
    "canonical",
    "canonical_insn",
    "canonical_text",
    "decode_one",
]


class AssemblyError(TranslationError):
    """Keystone cannot encode an instruction, or its bytes do not mean what the text says."""

    def __init__(
        self,
        text: str,
        address: int,
        encoding: bytes | None,
        decoded: str | None,
        reason: str,
    ) -> None:
        self.text = text
        self.address = address
        self.encoding = encoding
        self.decoded = decoded
        self.reason = reason
        message = f"cannot assemble {text!r} at {address:#x}: "
        if encoding is None:
            message += reason
        else:
            message += f"Keystone produced {encoding.hex(' ') or 'no bytes'}"
            if encoding:
                message += (
                    f", which Capstone decodes as {decoded!r}"
                    if decoded is not None
                    else ", which Capstone cannot decode"
                )
            message += f" ({reason})"
        super().__init__(message)


class DecodedInsn(Protocol):
    """The parts of a Capstone ``CsInsn`` that :func:`canonical_insn` reads."""

    address: int
    size: int
    mnemonic: str
    op_str: str
    bytes: bytearray


@lru_cache(maxsize=1)
def _assembler() -> Any:
    import keystone  # imported lazily, like Capstone

    return keystone.Ks(keystone.KS_ARCH_X86, keystone.KS_MODE_64)


def assemble(text: str, address: int) -> bytes:
    """Encode the one instruction ``text`` (Capstone's Intel syntax) to run at ``address``.

    The bytes are decoded again and must be one instruction that means exactly ``text``
    (see :func:`canonical`); anything else, including a Keystone error, is an AssemblyError.
    As in Capstone's output, ``[rip + D]`` is relative to the end of this instruction.
    """
    from keystone import KsError

    if not text.isascii():
        raise AssemblyError(text, address, None, None, "not ASCII text")
    try:
        encoding, _count = _assembler().asm(text, address)
    except KsError as e:
        raise AssemblyError(text, address, None, None, f"Keystone: {e}") from None
    code = bytes(encoding or b"")
    if not code:
        raise AssemblyError(text, address, code, None, "not an instruction")
    insn = decode_one(code, address)
    if insn is None:
        raise AssemblyError(text, address, code, None, "invalid instruction")
    if insn.size != len(code):
        raise AssemblyError(
            text, address, code, _describe(code, address), "more than one instruction"
        )
    wanted = canonical_text(text, address, insn.size)
    got = canonical_insn(insn)
    if wanted != got:
        raise AssemblyError(
            text, address, code, _describe(code, address), f"means {got!r}, not {wanted!r}"
        )
    return code


def assemble_many(lines: Sequence[str], address: int) -> bytes:
    """Encode consecutive instructions from ``address`` on, each verified at its own address."""
    code = bytearray()
    for line in lines:
        code += assemble(line, address + len(code))
    return bytes(code)


_LABEL = re.compile(r"([A-Za-z_.][A-Za-z0-9_.]*):")
MAX_BLOCK_PASSES = 8
# Lines whose encoding may depend on where they are: relative branches and calls, and
# RIP-relative operands.  Any other line is encoded once and its bytes reused.
_POSITIONAL = re.compile(r"^\s*(?:j[a-z]*|call|loop[a-z]*|xbegin)\b|\brip\b")


@dataclass(frozen=True)
class Fixed:
    """A piece of a block that is not assembled from text: ``encode(address)`` gives its
    bytes (always ``size`` of them) at ``address``; ``origin`` is an address it stands for."""

    size: int
    encode: Callable[[int], bytes]
    origin: int | None = None


Line = str | Fixed


def assemble_block(lines: Sequence[Line], address: int) -> bytes:
    """Encode a sequence that may define local labels (``name:`` on its own line) and
    branch to them, each instruction verified at its own address.

    Label references are replaced by the labels' addresses; branch sizes are recomputed
    until the layout settles, so the result depends only on distances inside the block.
    """
    return assemble_block_map(lines, address)[0]


def assemble_block_map(lines: Sequence[Line], address: int
                       ) -> tuple[bytes, list[tuple[int, int]]]:
    """:func:`assemble_block`, and the (address, origin) of each :class:`Fixed` piece."""
    labels: dict[str, int] = {}
    body: list[tuple[str | None, Line]] = []  # (label defined here, instruction or "")
    for line in lines:
        if isinstance(line, Fixed):
            body.append((None, line))
            continue
        text = line.strip()
        m = _LABEL.fullmatch(text)
        if m:
            if m.group(1) in labels or any(lab == m.group(1) for lab, _ in body):
                raise AssemblyError(text, address, None, None, "label defined twice")
            body.append((m.group(1), ""))
        elif text:
            body.append((None, text))
    names = [lab for lab, _ in body if lab]
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b") if names else None
    sizes = [0] * len(body)
    for _ in range(MAX_BLOCK_PASSES):
        at, labels = address, {}
        for (lab, _), size in zip(body, sizes, strict=True):
            if lab:
                labels[lab] = at
            at += size
        code = bytearray()
        new_sizes = []
        origins: list[tuple[int, int]] = []
        for _lab, item in body:
            here = address + len(code)
            if isinstance(item, Fixed):
                encoded = item.encode(here)
                if item.origin is not None:
                    origins.append((here, item.origin))
            elif not item:
                encoded = b""
            elif pattern is not None and pattern.search(item):
                encoded = assemble(pattern.sub(partial(_label_address, labels), item), here)
            elif _POSITIONAL.search(item):
                encoded = assemble(item, here)
            else:
                encoded = _assemble_anywhere(item)
            code += encoded
            new_sizes.append(len(encoded))
        if new_sizes == sizes:  # the labels were placed where the code really is
            return bytes(code), origins
        sizes = new_sizes
    raise AssemblyError("\n".join(str(x) for x in lines), address, None, None,
                        "branch sizes do not settle")


def rename_labels(lines: Sequence[Line], suffix: str) -> list[Line]:
    """``lines`` with each label they define (and every use of it) renamed ``name+suffix``,
    so that the sequence can be placed inside another one."""
    names = [m.group(1) for t in lines if isinstance(t, str)
             for m in [_LABEL.fullmatch(t.strip())] if m]
    if not names:
        return list(lines)
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b")
    return [pattern.sub(lambda m: m.group(1) + suffix, t) if isinstance(t, str) else t
            for t in lines]


@lru_cache(maxsize=65536)
def _assemble_anywhere(text: str) -> bytes:
    """The encoding of a line that means the same at any address (checked at address 0)."""
    return assemble(text, 0)


def _label_address(labels: dict[str, int], m: re.Match[str]) -> str:
    return f"{labels[m.group(1)]:#x}"


def _describe(code: bytes, address: int) -> str:
    """Capstone's text for ``code``: its instructions joined by ``; `` (for messages)."""
    parts: list[str] = []
    offset = 0
    while offset < len(code):
        insn = decode_one(code[offset:], address + offset)
        if insn is None:
            parts.append(f"(invalid: {code[offset:].hex(' ')})")
            break
        parts.append(f"{insn.mnemonic} {insn.op_str}".strip())
        offset += insn.size
    return "; ".join(parts)


# ---------------------------------------------------------------------------------------------
# Canonical form

_MASK64 = (1 << 64) - 1
_MASK32 = (1 << 32) - 1

# Prefix words Capstone puts in front of the mnemonic ("rep stosq", "lock xadd").
_PREFIX_WORDS = frozenset(
    {"lock", "rep", "repe", "repz", "repne", "repnz", "notrack", "bnd", "xacquire", "xrelease"}
)
# Capstone says "movabs" for the imm64 and moffs forms of mov; they mean what "mov" says.
_MNEMONIC_ALIASES = {"movabs": "mov"}
# Instructions whose two operands can be written in either order with the same meaning.
_SYMMETRIC = frozenset({"xchg"})
# Legacy prefixes (address-size 0x67 among them) that may precede REX and the opcode.
_LEGACY_PREFIXES = frozenset({0xF0, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65, 0x66, 0x67})

_PUNCT_SPACES = re.compile(r"\s*([\[\]:*+\-,])\s*")
_NUMBER = re.compile(r"(?<![0-9a-z_.$@])[0-9][0-9a-z_]*")
_HEX = re.compile(r"0x[0-9a-f]+")
_DECIMAL = re.compile(r"0|[1-9][0-9]*")
_BEFORE_BRACKET = re.compile(r"(?<=[0-9a-z_])\[")
_MEMORY = re.compile(r"\[([^\[\]]*)\]")
_SIGNS = re.compile(r"([+-]+)")


def canonical(
    mnemonic: str, op_str: str, address: int, size: int, *, address_size: int = 64
) -> str:
    """Normal form of an instruction of ``size`` bytes at ``address``, for comparing meanings.

    Two texts have the same normal form only if they mean the same instruction:
    - lowercase, single spaces, Capstone's spacing (``qword ptr fs:[rbx + rcx*8 - 8]``);
    - numbers are read as ``0x`` hex or plain decimal and written as Capstone does (decimal
      below 10, ``0x`` hex above); a written sign is kept, so ``-16`` and ``0xfffffff0`` differ
      even where they encode alike.  Any other spelling (``010``, ``10h``) stays as it is and
      so never matches Capstone's;
    - inside ``[...]`` terms are added up: ``+ -`` folds, zero displacements and ``*1`` go,
      the displacement comes last; an operand without registers is an absolute address
      (masked to ``address_size`` bits);
    - ``[rip + D]`` becomes ``[rip->T]`` with T = ``address + size + D`` (``eip`` likewise, 32
      bits), the address it really accesses, written differently from an absolute ``[T]``;
    - ``movabs`` is ``mov``; ``xchg`` operands are sorted.
    """
    return _canonical_line(f"{mnemonic} {op_str}", address + size, address_size)


def canonical_text(text: str, address: int, size: int) -> str:
    """:func:`canonical` of an instruction written as one line (prefixes, mnemonic, operands)."""
    return _canonical_line(text, address + size, 64)


def canonical_insn(insn: DecodedInsn) -> str:
    """:func:`canonical` of a Capstone instruction, with what its text does not say made explicit.

    The address size comes from the prefix bytes, and a ``nop`` with operands that is not the
    ``0f 1f /0`` NOP is named ``hint-nop`` (Capstone prints reserved prefetch hints as ``nop``).
    """
    code = bytes(insn.bytes)
    prefixes, opcode = _split_prefixes(code)
    address_size = 32 if 0x67 in prefixes else 64
    mnemonic = insn.mnemonic
    if mnemonic.split()[-1:] == ["nop"] and insn.op_str and not _is_nop_0f1f(opcode):
        mnemonic = mnemonic[: -len("nop")] + "hint-nop"
    return canonical(mnemonic, insn.op_str, insn.address, insn.size, address_size=address_size)


def _split_prefixes(code: bytes) -> tuple[bytes, bytes]:
    """(legacy prefixes, the rest from the opcode on, REX skipped) of an encoding."""
    i = 0
    while i < len(code) and code[i] in _LEGACY_PREFIXES:
        i += 1
    j = i + 1 if i < len(code) and 0x40 <= code[i] <= 0x4F else i
    return code[:i], code[j:]


def _is_nop_0f1f(opcode: bytes) -> bool:
    """Whether the opcode bytes are ``0f 1f /0``, the documented multi-byte NOP."""
    return len(opcode) >= 3 and opcode[:2] == b"\x0f\x1f" and (opcode[2] >> 3) & 7 == 0


def _canonical_line(line: str, next_ip: int, address_size: int) -> str:
    words = line.lower().split()
    head: list[str] = []
    while words and words[0] in _PREFIX_WORDS:
        head.append(words.pop(0))
    if words:
        mnemonic = words.pop(0)
        head.append(_MNEMONIC_ALIASES.get(mnemonic, mnemonic))
    rest = _BEFORE_BRACKET.sub(" [", _PUNCT_SPACES.sub(r"\1", " ".join(words)))
    operands = [_operand(op, next_ip, address_size) for op in rest.split(",")] if rest else []
    if head and head[-1] in _SYMMETRIC and len(operands) == 2:
        operands.sort()
    return " ".join(head) + (" " + ", ".join(operands) if operands else "")


def _operand(text: str, next_ip: int, address_size: int) -> str:
    text = _NUMBER.sub(lambda m: _number_text(m.group()), text)
    return _MEMORY.sub(lambda m: "[" + _memory(m.group(1), next_ip, address_size) + "]", text)


def _parse_number(token: str) -> int | None:
    if _HEX.fullmatch(token):
        return int(token, 16)
    if _DECIMAL.fullmatch(token):
        return int(token)
    return None


def _render_number(value: int) -> str:
    """Capstone's way: decimal below 10, ``0x`` hex otherwise; a sign in front if negative."""
    sign, value = ("-", -value) if value < 0 else ("", value)
    return sign + (str(value) if value < 10 else hex(value))


def _number_text(token: str) -> str:
    value = _parse_number(token)
    return token if value is None else _render_number(value)


def _memory(content: str, next_ip: int, address_size: int) -> str:
    """Normal form of the inside of ``[...]`` (spaces already removed, numbers normalised)."""
    parts = _SIGNS.split(content)
    terms: list[tuple[bool, str]] = []  # (negative, term)
    negative = False
    for i, part in enumerate(parts):
        if i % 2:
            negative = part.count("-") % 2 == 1
        elif part:
            terms.append((negative, part))
            negative = False
        elif not (i == 0 and len(parts) > 1):
            return content  # a dangling sign: not understood, kept as written
    displacement = 0
    registers: list[tuple[bool, str]] = []
    for neg, term in terms:
        value = _parse_number(term)
        if value is not None:
            displacement += -value if neg else value
            continue
        base, star, scale = term.partition("*")
        if star and _parse_number(scale) == 1:
            term = base
        registers.append((neg, term))
    if not registers:
        mask = _MASK32 if address_size == 32 else _MASK64
        return _render_number(displacement & mask)
    if len(registers) == 1 and registers[0] == (False, "rip"):
        return "rip->" + _render_number((next_ip + displacement) & _MASK64)
    if len(registers) == 1 and registers[0] == (False, "eip"):
        return "eip->" + _render_number((next_ip + displacement) & _MASK32)
    out = ""
    for neg, term in registers:
        if out:
            out += (" - " if neg else " + ") + term
        else:
            out = ("-" if neg else "") + term
    if displacement:
        out += (" - " if displacement < 0 else " + ") + _render_number(abs(displacement))
    return out
