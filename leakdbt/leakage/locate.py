"""Naming a leak point for people: instruction, ``module:symbol+offset``, source line, and
the ``[[protect.region]]`` entry that would cover it."""

from __future__ import annotations

from functools import lru_cache

from leakdbt.contract.edit import RegionEntry
from leakdbt.dbt.cfg import function_cfg
from leakdbt.errors import LeakDBTError
from leakdbt.leakage.findings import Finding, LeakKind, Witness
from leakdbt.leakage.trials import Place
from leakdbt.loader.dwarf import SourceLine
from leakdbt.loader.elf import load_image
from leakdbt.loader.image import Image
from leakdbt.x86.insn import decode


@lru_cache(maxsize=32)
def image_of(path: str) -> Image | None:
    try:
        return load_image(path)
    except LeakDBTError:
        return None


def source_line(path: str, link_address: int) -> SourceLine | None:
    """The source line of ``link_address`` in the ELF file at ``path`` (DWARF), if known."""
    from leakdbt.loader.dwarf import lookup_source

    return lookup_source(path, link_address)


def describe_point(kind: LeakKind, mode: str, place: Place, distinct: int, trials: int,
                   witness: Witness, suggest: bool) -> Finding:
    """The finding for one leak point."""
    image = image_of(place.module_path) if place.module_path else None
    text = "?"
    if image is not None:
        insn = decode(image.read(place.link_address, 15), place.link_address)
        if insn is not None:
            text = insn.text
    source = source_line(place.module_path, place.link_address) if place.module_path else None
    suggestion = _suggestion(kind, place, image, text) if suggest and image else None
    return Finding(kind=kind, address=place.original, location=place.symbolic,
                   module=place.module, link_address=place.link_address, instruction=text,
                   source=source, mode=mode, module_path=place.module_path, distinct=distinct,
                   trials=trials, witness=witness, suggestion=suggestion)


def _suggestion(kind: LeakKind, place: Place, image: Image, text: str) -> str | None:
    entry = suggest_region(kind, place, image, text)
    return None if entry is None else entry.toml()


def suggest_region(kind: LeakKind, place: Place, image: Image, text: str,
                   tool: str = "leakdbt check") -> RegionEntry | None:
    """The ``[[protect.region]]`` that covers the leak: the block holding the instruction,
    with the kind of the pass that removes that kind of leak."""
    func = image.function_containing(place.link_address)
    if func is None:
        return None
    try:
        cfg = function_cfg(image, func)
    except LeakDBTError:
        return None
    block = cfg.block_at(place.link_address)
    start = block.start if block is not None else place.link_address
    name = image.symbolize(start) or f"{start:#x}"
    at = name if place.is_main else f"{place.module}:{name}"
    mnemonic = text.split()[0] if text != "?" else ""
    if kind is LeakKind.CONTROL_FLOW:
        region_kind = "branch"
    elif kind is LeakKind.MEMORY_ACCESS:
        region_kind = "table"
    elif mnemonic in ("div", "idiv"):
        region_kind = "divide"
    else:
        region_kind = "float"
    return RegionEntry(at, region_kind, f"{tool}: {kind.value} leak at {place.symbolic} "
                                        f"({text})")
