"""Upper bounds of a register's value from the instructions of a block that compute it.

What for.  A secret-indexed access ``[base + index*scale + disp]`` whose index register is
provably at most ``M`` can only touch ``[base + disp, base + disp + M*scale + width)``,
whatever the secret: the oblivious-table pass scans that span when no table bounds are
known (a table in a struct on the stack, docs/passes.md "Heap tables").

How.  :func:`upper_bound` walks back from an instruction of the block to the last one that
writes the register and reads the bound off it, recursing through the registers it reads
(a move, an ``and``), to the start of the block; a register not written in the block is
unknown (None).  The rules (``w``: the destination's width; a 32-bit destination zero-extends
the 64-bit register, so it alone bounds it by 2**32 - 1):

- ``movzx r, r/m8`` → 255; ``movzx r, r/m16`` → 65535;
- ``mov r, imm`` → imm; ``mov r, r'`` → the bound of r' (its low w bytes);
- ``and r, imm`` / ``and r, r'`` / ``and r, m`` → the smaller of the operands' bounds;
- ``shr r, imm`` → the bound of r shifted (the count masked as the CPU does);
- ``add r, x`` / ``or r, x`` (x >= 0) → the sum of the bounds; ``lea r, [b + i*s + d]``
  (d >= 0) → b's bound + i's bound * s + d; either only when the sum cannot carry out of
  the destination;
- ``xor r, r`` / ``sub r, r`` (the same register) → 0;
- any other write of a 32-bit register → 2**32 - 1 (``bsf``/``bsr``, which may leave their
  destination as it was, excepted); a write of an 8- or 16-bit part keeps the other bits:
  the bound of the register before, with the written bits set;
- anything else (a 64-bit write by another instruction, a register written implicitly) →
  unknown.

The bound is of the unsigned 64-bit value and is sound, not tight: the value can never
exceed it, whatever the inputs of the block.
"""

from __future__ import annotations

from typing import Any

from leakdbt.plugin_api import REGISTER64, Insn, detail, detail_constants

__all__ = ["MASK64", "upper_bound"]

MASK64 = (1 << 64) - 1
_HIGH_BYTE = frozenset({"ah", "bh", "ch", "dh"})
_KEEPS_DESTINATION = frozenset({"bsf", "bsr"})  # a zero source may leave it unchanged
_DEPTH = 16  # recursion through moves and ands


def _mask(width: int) -> int:
    return (1 << (8 * width)) - 1


def upper_bound(block: tuple[Insn, ...], at: int, register: str, _depth: int = 0
                ) -> int | None:
    """The largest value the 64-bit ``register`` can hold just before ``block[at]`` runs,
    from the block's instructions before it, or None when they do not bound it."""
    if _depth > _DEPTH:
        return None
    for i in range(at - 1, -1, -1):
        ci = detail(block[i])
        written = [ci.reg_name(r) for r in ci.regs_access()[1]]
        names = [n for n in written if REGISTER64.get(n) == register]
        if not names:
            continue
        found = _bound_of_write(block, i, ci, register, names, _depth)
        return None if found is None or found >= MASK64 else found  # all ones: no bound
    return None


def _bound_of_write(block: tuple[Insn, ...], i: int, ci: Any, register: str,
                    names: list[str], depth: int) -> int | None:
    """The bound of ``register`` after ``block[i]``, which writes it (as ``names``)."""
    k = detail_constants()
    ops = ci.operands
    dest = ops[0] if ops and ops[0].type == k.op_reg else None
    dest_name = ci.reg_name(dest.reg) if dest is not None else None
    if dest is None or dest_name is None or REGISTER64.get(dest_name) != register \
            or len(names) != 1:
        # written implicitly (mul, cpuid, xchg's second operand ...): only its width says
        return _by_width(block, i, register, names, depth)
    width = dest.size
    if width in (1, 2):
        return _partial(block, i, register, dest_name, depth)
    mnemonic = block[i].mnemonic
    rule = _RULES.get(mnemonic)
    if rule is not None:
        found = rule(block, i, ci, register, width, depth)
        if found is not None:
            return found
    if mnemonic in _KEEPS_DESTINATION:
        return None
    return _mask(4) if width == 4 else None


def _by_width(block: tuple[Insn, ...], i: int, register: str, names: list[str], depth: int
              ) -> int | None:
    if len(names) != 1 or block[i].mnemonic in _KEEPS_DESTINATION:
        return None
    name = names[0]
    if name == register:
        return None
    if name.startswith("e") or name.endswith("d"):  # eax, r8d: zero-extended
        return _mask(4)
    return _partial(block, i, register, name, depth)


def _partial(block: tuple[Insn, ...], i: int, register: str, name: str, depth: int
             ) -> int | None:
    """An 8- or 16-bit part written: the other bits are the register's before."""
    before = upper_bound(block, i, register, depth + 1)
    if before is None:
        return None
    return before | _part_mask(name)


def _part_mask(name: str) -> int:
    """The bits an 8- or 16-bit register name covers of its 64-bit register."""
    if name in _HIGH_BYTE:
        return 0xFF00
    if name.endswith(("l", "b")):  # al, sil, r8b
        return 0xFF
    return 0xFFFF  # ax, si, r8w


def _operand_bound(block: tuple[Insn, ...], i: int, ci: Any, op: Any, width: int,
                   depth: int) -> int | None:
    """The bound of source operand ``op`` of ``block[i]`` as a ``width``-byte value."""
    k = detail_constants()
    mask = _mask(width)
    if op.type == k.op_reg:
        reg = REGISTER64.get(ci.reg_name(op.reg))
        if reg is None:
            return None
        found = upper_bound(block, i, reg, depth + 1)
        source_mask = _mask(op.size)
        if ci.reg_name(op.reg) in _HIGH_BYTE:
            return 0xFF
        return min(found, source_mask) if found is not None else source_mask & mask
    if op.type == k.op_mem:
        return _mask(op.size) & mask
    return op.imm & mask  # an immediate, sign-extended to the operand size


def _same_register(ci: Any) -> bool:
    k = detail_constants()
    ops = ci.operands
    return len(ops) == 2 and all(o.type == k.op_reg for o in ops) and ops[0].reg == ops[1].reg


def _movzx(block: tuple[Insn, ...], i: int, ci: Any, register: str, width: int, depth: int
           ) -> int | None:
    source = ci.operands[1]
    return _mask(source.size) if source.size in (1, 2) else None


def _mov(block: tuple[Insn, ...], i: int, ci: Any, register: str, width: int, depth: int
         ) -> int | None:
    if len(ci.operands) != 2:
        return None
    found = _operand_bound(block, i, ci, ci.operands[1], width, depth)
    if found is None:
        return None
    return min(found, _mask(width))


def _and(block: tuple[Insn, ...], i: int, ci: Any, register: str, width: int, depth: int
         ) -> int | None:
    if len(ci.operands) != 2:
        return None
    before = upper_bound(block, i, register, depth + 1)
    mine = _mask(width) if before is None else min(before, _mask(width))
    other = _operand_bound(block, i, ci, ci.operands[1], width, depth)
    return mine if other is None else min(mine, other)


def _shr(block: tuple[Insn, ...], i: int, ci: Any, register: str, width: int, depth: int
         ) -> int | None:
    k = detail_constants()
    before = upper_bound(block, i, register, depth + 1)
    ops = ci.operands
    if len(ops) == 1:
        count = 1  # shr r, 1 (Capstone may omit the count)
    elif ops[1].type not in (k.op_reg, k.op_mem):  # an immediate count
        count = ops[1].imm & (0x3F if width == 8 else 0x1F)
    else:  # shr r, cl: at most the value before
        return None if before is None else min(before, _mask(width))
    if count == 0:
        return before
    start = _mask(width) if before is None else min(before, _mask(width))
    return start >> count


def _add(block: tuple[Insn, ...], i: int, ci: Any, register: str, width: int, depth: int
         ) -> int | None:
    """``add r, x`` (``or r, x``): at most the sum of the bounds, unless that can carry out
    of the destination (it then wraps: no bound but the width's)."""
    k = detail_constants()
    ops = ci.operands
    if len(ops) != 2 or (ops[1].type not in (k.op_reg, k.op_mem) and ops[1].imm < 0):
        return None
    before = upper_bound(block, i, register, depth + 1)
    other = _operand_bound(block, i, ci, ops[1], width, depth)
    if before is None or other is None or before + other > _mask(width):
        return None
    return before + other


def _lea(block: tuple[Insn, ...], i: int, ci: Any, register: str, width: int, depth: int
         ) -> int | None:
    """``lea r, [b + x*s + d]`` with b and x bounded and d >= 0: at most their sum, unless
    that can carry out of the destination."""
    mem = ci.operands[1].mem
    total = mem.disp
    if total < 0:
        return None
    for reg, factor in ((mem.base, 1), (mem.index, mem.scale)):
        if not reg:
            continue
        name = REGISTER64.get(ci.reg_name(reg))
        found = upper_bound(block, i, name, depth + 1) if name is not None else None
        if found is None:
            return None
        total += found * factor
    return total if total <= _mask(width) else None


def _zero(block: tuple[Insn, ...], i: int, ci: Any, register: str, width: int, depth: int
          ) -> int | None:
    return 0 if _same_register(ci) else None


_RULES = {
    "movzx": _movzx,
    "mov": _mov,
    "and": _and,
    "add": _add,
    "or": _add,  # x | y <= x + y
    "lea": _lea,
    "shr": _shr,
    "xor": _zero,
    "sub": _zero,
}
"""Mnemonic → the bound of its destination register (None: the generic width rule)."""
