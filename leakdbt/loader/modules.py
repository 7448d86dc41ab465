"""Which ELF file is loaded where, so that guest addresses read as ``module:symbol+offset``."""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable
from dataclasses import dataclass

from leakdbt.errors import ElfError
from leakdbt.loader.elf import load_image
from leakdbt.loader.image import Image


@dataclass
class LoadedModule:
    """An ELF image mapped at ``base`` (its load bias; 0 for non-PIE executables)."""

    name: str
    host_path: str
    base: int
    start: int
    end: int
    image: Image | None
    is_main: bool

    def is_named(self, module: str | None) -> bool:
        """Whether a contract's module name means this module: None is the main program;
        a library is named by its file name or its soname."""
        if module is None:
            return self.is_main
        return not self.is_main and module in (self.name, self.image.soname if self.image
                                               else None)


class ModuleMap:
    """Modules mapped by the loader (main program, interpreter) and by the guest's ld.so."""

    def __init__(self) -> None:
        self._mods: list[LoadedModule] = []
        self._images: dict[str, Image | None] = {}
        self.listeners: list[Callable[[LoadedModule], None]] = []  # told of each new module

    def modules(self) -> list[LoadedModule]:
        return list(self._mods)

    def add_image(self, image: Image, base: int, *, is_main: bool = False) -> LoadedModule:
        """Record an image the loader mapped itself."""
        self._images[image.path] = image
        mod = LoadedModule(os.path.basename(image.path), image.path, base,
                           base + image.low, base + image.high, image, is_main)
        self._insert(mod)
        return mod

    def add_file_mapping(self, host_path: str, address: int, offset: int, size: int) -> None:
        """Record a file mapping made by the guest; the offset-0 mapping gives the base."""
        for m in self._mods:
            if m.host_path == host_path and m.start <= address < m.end + (1 << 32):
                m.end = max(m.end, address + size)
                return
        if offset != 0:
            return
        image = self._image(host_path)
        if image is None or (not image.is_pie and address != image.low):
            return  # not loaded as code: e.g. an executable mapped as data elsewhere
        base = address - image.low if image.is_pie else 0
        self._insert(LoadedModule(os.path.basename(host_path), host_path, base,
                                  address, max(address + size, base + image.high), image, False))

    def remove_range(self, start: int, end: int) -> None:
        """Forget modules entirely inside an unmapped range."""
        self._mods = [m for m in self._mods if not (start <= m.start and m.end <= end)]

    def find(self, address: int) -> LoadedModule | None:
        starts = [m.start for m in self._mods]
        i = bisect.bisect_right(starts, address) - 1
        if i >= 0 and address < self._mods[i].end:
            return self._mods[i]
        return None

    def symbolize(self, address: int) -> str:
        """``sym+0xOFF`` in the main program, ``lib.so:sym+0xOFF`` elsewhere, else hex."""
        m = self.find(address)
        if m is None or m.image is None:
            return f"{address:#x}"
        name = m.image.symbolize(address - m.base)
        prefix = "" if m.is_main else f"{m.name}:"
        if name is None:
            return f"{prefix}{address - m.base:#x}" if prefix else f"{address:#x}"
        return f"{prefix}{name}"

    def _image(self, host_path: str) -> Image | None:
        if host_path not in self._images:
            try:
                self._images[host_path] = load_image(host_path)
            except ElfError:
                self._images[host_path] = None
        return self._images[host_path]

    def _insert(self, mod: LoadedModule) -> None:
        starts = [m.start for m in self._mods]
        self._mods.insert(bisect.bisect_left(starts, mod.start), mod)
        for listener in self.listeners:
            listener(mod)
