"""Adaptive hardened files: the code that chooses, at each region entry, between the
relocated original and the hardened copy, from a mode word a trusted monitor writes.

Protocol (docs/harden.md): the file has a writable *mode page*, zero at start-up.  An
initialisation routine, run before the program's own start-up code (the ELF entry point of
an executable, ``DT_INIT`` of a shared library), opens the mode file with raw system calls and
maps it over the mode page (``MAP_SHARED|MAP_FIXED``) if it is a regular file of at least one
page, owned by root or by the running user and writable by no one else.  Word 0 of the page
equal to :data:`FAST_WORD` runs the regions' originals; any other value (the zero page when
there is no monitor or no usable file) runs them hardened.  At ``64 + 16 * i`` the stub of
region ``i`` counts its fast entries, at ``72 + 16 * i`` its hardened ones.  The constants
of this protocol are in :mod:`leakdbt.monitor.modefile`, the writer's side.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from leakdbt.dbt.relocate import Translation
from leakdbt.elfpatch.elffile import EHDR, PHDR, ElfWriteError
from leakdbt.loader.image import ElfKind, Image
from leakdbt.monitor.modefile import COUNTERS, FAST_WORD, MAX_REGIONS, PAGE
from leakdbt.x86.asm import Fixed, Line, assemble, assemble_block

STUB_SIZE = 96  # the fast path at +0, the stub at +STUB_ENTRY; int3 in between
STUB_ENTRY = 32
PT_DYNAMIC, DT_NULL, DT_INIT = 2, 0, 12
RED_ZONE = 0x80
_DYN = struct.Struct("<qQ")


def _rip(template: str, target: int) -> Fixed:
    """The instruction ``template`` with ``{}`` a RIP-relative operand denoting ``target``."""
    def encode(at: int) -> bytes:
        size = len(assemble(template.format("rip + 0x0"), at))
        disp = target - (at + size)
        return assemble(template.format(f"rip {'+' if disp >= 0 else '-'} {abs(disp):#x}"), at)
    return Fixed(len(assemble(template.format("rip + 0x0"), 0)), encode)


def region_stub(index: int, fast: int, hardened: int, page: int,
                place: Callable[[int], int]) -> Translation:
    """The entry of region ``index``: count the entry, then jump to the ``fast`` copy when
    the mode word says so, else to the ``hardened`` one.  It changes nothing the region
    could see: flags are saved below the red zone, and RSP comes back to where it was."""
    if index >= MAX_REGIONS:
        raise ElfWriteError(f"an adaptive file holds at most {MAX_REGIONS} regions")
    base = place(STUB_SIZE)
    counter = page + COUNTERS + 16 * index
    fast_path = assemble_block([
        _rip("add qword ptr [{}], 1", counter), "popfq", f"lea rsp, [rsp + {RED_ZONE:#x}]",
        f"jmp {fast:#x}"], base)
    stub = assemble_block([
        f"lea rsp, [rsp - {RED_ZONE:#x}]", "pushfq",
        _rip(f"cmp dword ptr [{{}}], {FAST_WORD:#x}", page), f"je {base:#x}",
        _rip("add qword ptr [{}], 1", counter + 8), "popfq",
        f"lea rsp, [rsp + {RED_ZONE:#x}]", f"jmp {hardened:#x}"], base + STUB_ENTRY)
    assert len(fast_path) <= STUB_ENTRY and STUB_ENTRY + len(stub) <= STUB_SIZE
    code = fast_path.ljust(STUB_ENTRY, b"\xcc") + stub.ljust(STUB_SIZE - STUB_ENTRY, b"\xcc")
    return Translation(f"stub{index}", base, code, base + STUB_ENTRY)


@dataclass(frozen=True)
class Init:
    """The initialisation routine and how it is reached."""

    translation: Translation
    patches: list[tuple[int, bytes]]  # (address, bytes): a DT_INIT value, for a library
    entry: int | None  # the new ELF entry point, for an executable


INIT_SIZE = 256


def init_code(image: Image, page: int, path: str, place: Callable[[int], int]) -> Init:
    """The routine that maps the mode file over ``page`` (module doc), then continues with
    what the file ran before: its entry point, or its ``DT_INIT`` function."""
    raw = path.encode()
    if b"\0" in raw or len(raw) > 1024:
        raise ElfWriteError(f"--mode-file {path!r}: not a usable path")
    patches: list[tuple[int, bytes]] = []
    if image.kind is ElfKind.SHARED:
        slot, previous = _dt_init(image)
        entry = None
    else:
        previous, entry = image.entry, None
    base = place(INIT_SIZE + len(raw) + 1)
    text = base + INIT_SIZE
    saved = ["rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11"]
    lines: list[Line] = [
        *(f"push {r}" for r in saved), "sub rsp, 0xa0",  # struct stat: 144 bytes
        "mov eax, 2", _rip("lea rdi, [{}]", text), "mov esi, 0x80002", "xor edx, edx",
        "syscall",  # open(path, O_RDWR | O_CLOEXEC)
        "test rax, rax", "js done", "mov r8, rax",
        "mov eax, 5", "mov rdi, r8", "mov rsi, rsp", "syscall",  # fstat(fd, &st)
        "test rax, rax", "jne close",
        "mov eax, dword ptr [rsp + 0x18]", "mov ecx, eax", "and ecx, 0xf000",
        "cmp ecx, 0x8000", "jne close",  # S_ISREG
        "test eax, 0x12", "jne close",  # neither group- nor other-writable
        f"cmp qword ptr [rsp + 0x30], {PAGE:#x}", "jl close",  # a whole page: no SIGBUS
        "mov r9d, dword ptr [rsp + 0x1c]", "test r9d, r9d", "je owned",  # owner root ...
        "mov eax, 0x66", "syscall", "cmp eax, r9d", "jne close",  # ... or getuid()
        "owned:",
        "mov eax, 9", _rip("lea rdi, [{}]", page), f"mov esi, {PAGE:#x}", "mov edx, 3",
        "mov r10d, 0x11", "xor r9d, r9d",
        "syscall",  # mmap(page, 4096, PROT_READ|PROT_WRITE, MAP_SHARED|MAP_FIXED, fd, 0)
        "close:", "mov eax, 3", "mov rdi, r8", "syscall",
        "done:", "add rsp, 0xa0", *(f"pop {r}" for r in reversed(saved)),
    ]
    if previous:
        lines.append(f"jmp {previous:#x}")
    else:
        lines.append("ret")
    code = assemble_block(lines, base)
    if len(code) > INIT_SIZE:
        raise ElfWriteError(f"the initialisation routine takes {len(code)} bytes, more than "
                            f"the {INIT_SIZE} reserved")
    code = code.ljust(INIT_SIZE, b"\xcc") + raw + b"\0"
    if image.kind is ElfKind.SHARED:
        patches.append((slot, base.to_bytes(8, "little")))
    else:
        entry = base
    return Init(Translation("init", base, code, base), patches, entry)


def _dt_init(image: Image) -> tuple[int, int]:
    """The address of a shared library's ``DT_INIT`` value and that value."""
    ehdr = EHDR.unpack_from(image.data, 0)
    for i in range(ehdr[10]):
        p = PHDR.unpack_from(image.data, ehdr[5] + i * PHDR.size)
        if p[0] != PT_DYNAMIC:
            continue
        for at in range(p[2], p[2] + p[5] - _DYN.size + 1, _DYN.size):
            tag, value = _DYN.unpack_from(image.data, at)
            if tag == DT_NULL:
                break
            if tag == DT_INIT:
                return p[3] + at - p[2] + 8, value
    raise ElfWriteError(f"{image.path}: a shared library without DT_INIT cannot run the "
                        "adaptive mode's initialisation (harden it with --mode hardened)")
