"""Declassified observations: what a trial reveals on purpose, which output-sensitive
checking compares trials by.

A trial's *declassified view* is its standard output, standard error and exit status when
``check.declassify`` lists them, and the values read at the contract's declassification
points (``[[check.declassify_at]]``: a register, or the bytes a register points to, when an
instruction is reached or when a function returns).  ``leakdbt check`` compares a trial only
with trials whose declassified views are equal (docs/checking.md, "Declassification").
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from leakdbt.contract.model import Contract, DeclassifyPoint, DeclassifyWhen, Location, Output
from leakdbt.errors import UsageError
from leakdbt.loader.modules import LoadedModule, ModuleMap
from leakdbt.machine.machine import Machine

KEPT_VALUES = 8  # values of one point kept for the report; all of them go into the digest


@dataclass
class PointValues:
    """What one declassification point read in one run: how often, the first values (hex)
    and a digest of all of them in order."""

    count: int = 0
    first: list[str] = field(default_factory=list)
    digest: str = ""

    def key(self) -> tuple[int, str]:
        return self.count, self.digest


class DeclassifiedRecorder:
    """Reads the contract's declassification points during one run (attach at start)."""

    def __init__(self, machine: Machine, modules: ModuleMap,
                 points: Sequence[DeclassifyPoint]) -> None:
        self.machine = machine
        self.points = list(points)
        self.values = {p.name: PointValues() for p in self.points}
        self._hashes = {p.name: hashlib.blake2b(digest_size=16) for p in self.points}
        self._found: set[str] = set()
        self._returns: dict[int, list[tuple[DeclassifyPoint, int]]] = {}  # ret addr -> frames
        self._return_hooks: set[int] = set()
        if any(p.when is DeclassifyWhen.RETURN for p in self.points):
            machine.resumable = True  # return hooks are added between engine runs (defer)
        for mod in modules.modules():
            self._add_module(mod)
        modules.listeners.append(self._add_module)

    def _add_module(self, mod: LoadedModule) -> None:
        for point in self.points:
            address = runtime_address(point.at, mod)
            if address is None:
                continue
            self._found.add(point.name)
            self.machine.hooks.at(address, self._hook(point))

    def _hook(self, point: DeclassifyPoint) -> Callable[[int, int], None]:
        """The code hook at the point's location: read now, or at the call's return."""
        act = self._read if point.when is DeclassifyWhen.REACHED else self._entered

        def hook(address: int, size: int) -> None:
            act(point)
        return hook

    def _entered(self, point: DeclassifyPoint) -> None:
        """At the function's entry: read the value when this call returns (at its return
        address, with the stack pointer above the entry's: this frame, not a nested one)."""
        rsp = self.machine.reg("rsp")
        back = int.from_bytes(self.machine.mem.read(rsp, 8), "little")
        frames = self._returns.setdefault(back, [])
        if frames and frames[-1] == (point, rsp):
            return  # the entry's hooks run again after the deferred retranslation below
        frames.append((point, rsp))
        if back not in self._return_hooks:
            self._return_hooks.add(back)
            self.machine.hooks.at(back, lambda a, s: self._returned(a))
            # The caller's code after the call may be translated already (without the
            # hook); the engine's translations are dropped between two runs, not in a hook.
            self.machine.defer(self.machine.hooks.retranslate)

    def _returned(self, address: int) -> None:
        frames = self._returns.get(address, [])
        rsp = self.machine.reg("rsp")
        while frames and frames[-1][1] < rsp:
            point, _ = frames.pop()
            self._read(point)

    def _read(self, point: DeclassifyPoint) -> None:
        reg = point.register or point.pointer
        assert reg is not None
        value = self.machine.reg(reg)
        if point.register is not None:
            data = value.to_bytes(8, "little")[:point.length]
        else:
            data = self.machine.mem.read(value, point.length)
        v = self.values[point.name]
        v.count += 1
        if len(v.first) < KEPT_VALUES:
            v.first.append(data.hex())
        h = self._hashes[point.name]
        h.update(data)
        v.digest = h.hexdigest()

    def missing(self) -> list[str]:
        """The points whose location no loaded module holds (after the run)."""
        return [p.name for p in self.points if p.name not in self._found]


def runtime_address(at: Location, mod: LoadedModule) -> int | None:
    """Where ``at`` is in the loaded module ``mod`` at run time, or None if not in it."""
    if at.absolute is not None:
        return at.absolute if mod.is_main else None
    if not mod.is_named(at.library) or mod.image is None or at.symbol is None:
        return None
    sym = mod.image.symbol(at.symbol)
    return None if sym is None else mod.base + sym.value + at.offset


def check_points_found(recorder: DeclassifiedRecorder) -> None:
    """A declassification point that names no code of the run is a contract mistake."""
    gone = recorder.missing()
    if gone:
        raise UsageError(f"check.declassify_at: {', '.join(gone)}: the location is in no "
                         "module the program loaded")


def declassified_view(contract: Contract, stdout: bytes, stderr: bytes, status: tuple[int, str],
                      points: dict[str, PointValues]) -> tuple[tuple[str, object], ...]:
    """A trial's declassified view (see the module doc): (name, value) pairs, equal for two
    trials exactly when they reveal the same."""
    out: list[tuple[str, object]] = []
    for output, value in ((Output.STDOUT, stdout), (Output.STDERR, stderr),
                          (Output.EXIT_STATUS, status)):
        if output in contract.check.declassify:
            out.append((output.value, value))
    for point in contract.check.declassify_at:
        v = points.get(point.name)
        out.append((point.name, v.key() if v else (0, "")))
    return tuple(out)
