"""ModuleMap: which ELF file is loaded where, from the mappings the loader and ld.so make."""

from __future__ import annotations

from pathlib import Path

from leakdbt.loader.elf import load_image
from leakdbt.loader.modules import ModuleMap
from tests.conftest import binary


def test_a_pie_mapped_by_the_guest_is_named_at_its_load_address(built: Path) -> None:
    path = binary("dynamic", "hello")
    image = load_image(path)
    main = image.symbol("main")
    assert main is not None
    modules = ModuleMap()
    seen = []
    modules.listeners.append(seen.append)
    modules.add_file_mapping(path, 0x7000_0000_0000, 0, 0x4000)
    assert [m.base for m in seen] == [0x7000_0000_0000 - image.low]
    assert modules.symbolize(0x7000_0000_0000 + main.value) == "hello:main"


def test_an_executable_mapped_as_data_elsewhere_is_not_a_module(built: Path) -> None:
    """A non-PIE program's code only means something at its link address; mapped anywhere
    else (read as a file) it names nothing and translates nothing."""
    path = binary("static", "hello")
    image = load_image(path)
    modules = ModuleMap()
    seen = []
    modules.listeners.append(seen.append)
    modules.add_file_mapping(path, 0x7000_0000_0000, 0, 0x4000)
    assert seen == [] and modules.find(0x7000_0000_0000) is None
    modules.add_file_mapping(path, image.low, 0, 0x4000)
    assert [m.base for m in seen] == [0]
