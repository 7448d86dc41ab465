"""Image.function_containing: the one lookup of the function symbol holding an address."""

from __future__ import annotations

from leakdbt.loader.image import PF_R, PF_X, ElfKind, Image, Segment, Symbol


def _image(symbols: tuple[Symbol, ...]) -> Image:
    return Image(path="/bin/demo", kind=ElfKind.STATIC, is_pie=False, entry=0x401000, phoff=64,
                 phentsize=56, phnum=1,
                 segments=(Segment(0x401000, 0x100, 0x1000, 0x100, PF_R | PF_X, 0x1000),),
                 interpreter=None, needed=(), soname=None, symbols=symbols, has_symtab=True)


def test_sized_and_unsized_functions_and_the_gaps_between() -> None:
    image = _image((Symbol("f", 0x401000, 0x10, "func"), Symbol("g", 0x401020, 0, "func"),
                    Symbol("h", 0x401080, 0x8, "func"), Symbol("data", 0x401010, 4, "object")))
    assert image.function_containing(0x400FFF) is None  # before every function
    assert image.function_containing(0x401000).name == "f"  # type: ignore[union-attr]
    assert image.function_containing(0x40100F).name == "f"  # type: ignore[union-attr]
    assert image.function_containing(0x401010) is None  # past f's size, before g
    assert image.function_containing(0x40107F).name == "g"  # type: ignore[union-attr]  # to h
    assert image.function_containing(0x401087).name == "h"  # type: ignore[union-attr]
    assert image.function_containing(0x401088) is None  # past h's size
