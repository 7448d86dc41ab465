"""A hardened ELF file: the contract's regions hardened by the passes ``exec --mode
hardened`` runs, placed in a new executable segment, entered by jumps patched over their
first bytes (docs/harden.md).

The regions, the passes and the entry-jump rule are the translator's own
(:func:`leakdbt.run.protect.protection`, :class:`~leakdbt.dbt.harden.Hardener`,
:func:`~leakdbt.dbt.dispatch.request_region`, :func:`~leakdbt.dbt.dispatch.entry_jump_fits`);
this module only decides addresses and writes bytes.  The copies use link-time addresses
(load bias 0): rel32 jumps and RIP-relative operands then hold at any load address, which
is checked for position-independent files by laying each copy out at a second bias.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from importlib.metadata import version

from leakdbt.contract import load
from leakdbt.contract.profiles import choose_profile
from leakdbt.dbt.codecache import REACH
from leakdbt.dbt.dispatch import RegionRequest, entry_jump_fits, request_region
from leakdbt.dbt.harden import Hardener
from leakdbt.dbt.region import CodeRegion
from leakdbt.dbt.relocate import Translation, relocate
from leakdbt.elfpatch import adaptive
from leakdbt.elfpatch.elffile import (
    PAGE,
    ElfWriteError,
    NewSegment,
    Placement,
    append,
    placement,
)
from leakdbt.loader.elf import load_image, section_headers
from leakdbt.loader.image import Image
from leakdbt.loader.info import HARDENING_NOTE, note_bytes
from leakdbt.monitor.modefile import DEFAULT_MODE_FILE
from leakdbt.run.protect import Protection, protection
from leakdbt.x86.asm import assemble

PF_X, PF_W, PF_R = 1, 2, 4
PROBE_BIAS = 0x5555_0000_0000  # a second load bias: position-dependent code shows up there
CODE_ALIGN = 16


@dataclass
class _Cursor:
    """Bump allocator over the new code segment (link-time addresses)."""

    at: int
    limit: int  # the last address every copy may reach its module from

    def place(self, size: int) -> int:
        start = self.at
        self.at = (start + size + CODE_ALIGN - 1) // CODE_ALIGN * CODE_ALIGN
        if self.at > self.limit:
            raise ElfWriteError(f"no room for the hardened code within ±2 GiB of the code it "
                                f"came from (it would end at {self.at:#x})")
        return start


@dataclass
class RegionRecord:
    """What the note records of one region."""

    name: str
    entry: int
    passes: list[str]
    unhardened: str | None = None  # why, when --allow-unhardened let it through

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"name": self.name, "entry": self.entry,
                                  "passes": self.passes}
        if self.unhardened is not None:
            out["unhardened"] = self.unhardened
        return out


@dataclass
class HardenedFile:
    """The bytes of the hardened file and what it records."""

    data: bytes
    note: dict[str, object]
    regions: list[RegionRecord] = field(default_factory=list)


def harden_file(binary: str, contract_path: str, cpu: str | None = None,
                mode: str = "hardened", allow_unhardened: bool = False,
                mode_file: str = DEFAULT_MODE_FILE) -> HardenedFile:
    """The hardened copy of ``binary`` as ``contract_path`` asks (see the module doc)."""
    image = load_image(binary)
    if any(s.name == HARDENING_NOTE for s in section_headers(binary, image.data)):
        raise ElfWriteError(f"{binary}: already hardened by leakdbt (it has a "
                            f"{HARDENING_NOTE} section); harden the original file")
    with open(contract_path, "rb") as f:
        contract_hash = hashlib.sha256(f.read()).hexdigest()
    contract = load(contract_path, binary=binary)
    profile, _why = choose_profile(cpu)
    protected = protection(contract, profile, allow_unhardened, strict=True)  # no silent gaps
    if not protected.regions:
        raise ElfWriteError(f"{contract_path}: the contract names no region to harden")
    extra = 1 if mode == "adaptive" else 0
    where = placement(image, 1 + extra, before=PAGE * extra)
    cursor = _Cursor(where.code, image.low + REACH)
    if cursor.at + PAGE > cursor.limit:
        raise ElfWriteError(f"{binary}: no room for the hardened code within ±2 GiB of the "
                            f"code it came from: the file spans {where.start - image.low:#x} "
                            "bytes of address space")
    hardener = protected.hardener()
    pieces: list[Translation] = []
    patches: list[tuple[int, bytes]] = []
    records: list[RegionRecord] = []
    mode_page = where.start  # adaptive: the page the monitor's word is mapped over
    for index, req in enumerate(protected.regions):
        region = _region(image, req)
        hard = _hardened_copy(image, protected, hardener, region, req, cursor)
        pieces.append(hard)
        outcome = hardener.outcomes[-1]
        target = hard.entry
        if mode == "adaptive":
            fast = _checked(image, region, partial(relocate, region), cursor)
            pieces.append(fast)
            stub = adaptive.region_stub(index, fast.entry, hard.entry, mode_page, cursor.place)
            pieces.append(stub)
            target = stub.entry
        patch = assemble(f"jmp {target:#x}", region.entry)
        if not entry_jump_fits(region, image, len(patch)):
            raise ElfWriteError(f"region {req.name}: its first {len(patch)} bytes cannot hold "
                                "a jump (another entry point, or a call returning, inside "
                                "them, or a block too short)")
        patches.append((region.entry, patch))
        records.append(RegionRecord(req.name, region.entry, list(outcome.applied),
                                    None if outcome.hardened else outcome.reason()))
    entry: int | None = None
    if mode == "adaptive":
        init = adaptive.init_code(image, mode_page, mode_file, cursor.place)
        pieces.append(init.translation)
        patches += init.patches
        entry = init.entry
    code = _code(where, cursor.at, pieces)
    note: dict[str, object] = {"contract_sha256": contract_hash, "cpu": profile.name, "mode": mode,
            "leakdbt": version("leakdbt"), "regions": [r.as_dict() for r in records]}
    if mode == "adaptive":
        note["mode_file"] = mode_file
        note["mode_page"] = mode_page
    segments = [NewSegment(where.table, code, PF_R | PF_X, ".leakdbt.text")]
    if mode == "adaptive":
        segments.insert(0, NewSegment(mode_page, bytes(PAGE), PF_R | PF_W, ".leakdbt.mode"))
    data = append(image, where, segments, [(HARDENING_NOTE, note_bytes(note))], patches,
                  entry)
    return HardenedFile(data, note, records)


def _region(image: Image, req: RegionRequest) -> CodeRegion:
    if req.module is not None:
        raise ElfWriteError(f"region {req.name} is in {req.module}, not in this file: "
                            f"harden {req.module} itself")
    return request_region(image, req, os.path.basename(image.path))


def _hardened_copy(image: Image, protected: Protection, hardener: Hardener,
                   region: CodeRegion, req: RegionRequest, cursor: _Cursor) -> Translation:
    assert req.needs is not None  # a planned contract says what every region needs
    needs = req.needs
    probe = protected.hardener()  # the second layout must not count as a second outcome
    t = hardener.translate(region, needs, 0, cursor.place, image)
    if t.probes:
        raise ElfWriteError(f"region {req.name}: its hardened code needs run-time allocation "
                            "bounds (a table in malloc'ed memory), which only the emulator "
                            "learns: run it with leakdbt exec")
    if image.is_pie:
        again = probe.translate(region, needs, PROBE_BIAS, t.base + PROBE_BIAS, image)
        _same_anywhere(t, again, region)
    return t


def _checked(image: Image, region: CodeRegion,
             translate: Callable[[int, Callable[[int], int] | int], Translation],
             cursor: _Cursor) -> Translation:
    """``translate(bias, place)`` at bias 0, checked to hold at any bias in a PIE file."""
    t = translate(0, cursor.place)
    if image.is_pie:
        _same_anywhere(t, translate(PROBE_BIAS, t.base + PROBE_BIAS), region)
    return t


def _same_anywhere(t: Translation, moved: Translation, region: CodeRegion) -> None:
    """A position-independent file is loaded at a bias: its copy must not hold addresses."""
    if moved.code != t.code:
        at = next(i for i, (a, b) in enumerate(zip(t.code, moved.code, strict=True)) if a != b)
        raise ElfWriteError(f"region {region.name}: its hardened code holds an absolute "
                            f"address (at copy offset {at:#x}), which a position-independent "
                            "file cannot hold without a run-time relocation")


def _code(where: Placement, end: int, pieces: list[Translation]) -> bytes:
    """The new segment's bytes from ``where.code`` to ``end``: every piece at its place."""
    code = bytearray(b"\xcc" * (end - where.code))  # int3 between pieces
    for t in pieces:
        code[t.base - where.code:t.end - where.code] = t.code
    return bytes(code)


def write_file(path: str, data: bytes, like: str) -> None:
    """Write ``data`` to ``path`` atomically (nothing is left behind on failure), with the
    permission bits of ``like``."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".leakdbt-harden-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, os.stat(like).st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
