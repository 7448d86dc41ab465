"""Trials: the program run once per set of secret values, everything else fixed.

Trial values come from a generator seeded with the check's seed (``TrialInput``); a trial
writes them where the contract says — argv, environment, standard input, a file (relative
path), a register or buffer at each entry of a function, or a global object at start — and
runs the program under :mod:`leakdbt.leakage.observe`.  Every trial starts from the same
state: the same binary, public inputs and environment, and virtual time (fixed AT_RANDOM,
seeded getrandom, a clock that advances by a fixed step per reading), so two trials with
equal secrets observe exactly the same thing; whatever differs between trials with
different secrets depends on the secrets.  (A fresh process per trial is the snapshot: it
is identical up to the first secret byte.)
"""

from __future__ import annotations

import contextlib
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from unicorn import UC_HOOK_CODE
from unicorn import x86_const as x

from leakdbt.contract.model import (
    ArgvSource,
    Contract,
    EnvSource,
    FileSource,
    PointerSource,
    RegisterSource,
    StdinSource,
    SymbolSource,
)
from leakdbt.dbt.dispatch import Dispatcher, Mode, RegionRequest
from leakdbt.dbt.harden import Hardener
from leakdbt.errors import GuestError, UsageError
from leakdbt.leakage.findings import Trial
from leakdbt.leakage.observe import RunObserver, Trace, entries_in
from leakdbt.loader.modules import LoadedModule, ModuleMap
from leakdbt.machine.machine import Machine
from leakdbt.run.session import ExecOptions, execute

VIRTUAL_TIME_SEED = 0  # the same in every trial: only the secrets differ


@dataclass(frozen=True)
class TrialInput:
    """One trial's secret values (raw bytes, ``length`` of each secret)."""

    index: int
    values: tuple[tuple[str, bytes], ...]

    def public(self) -> Trial:
        """The trial as reports show it (values in hex)."""
        return Trial(self.index, tuple((name, v.hex()) for name, v in self.values))


def trial_inputs(contract: Contract, count: int, seed: int) -> list[TrialInput]:
    """``count`` trials of values for every secret, reproducible by ``seed``.

    The contract's ``check.values`` come first (a secret without a given value for a trial
    gets a generated one).  Of the rest, most are uniformly random.  Random values almost
    never take a path guarded by a special value, so of every six trials from the second
    on, four are instead: all zero bytes, all 0xff bytes, random with each 16-bit word
    zeroed with probability 1/2, and the first trial's value with a random suffix."""
    rng = random.Random(seed)
    given = dict(contract.check.values)
    first: dict[str, bytes] = {}
    trials = []
    for i in range(count):
        values = []
        for s in contract.secrets:
            n = s.length
            shape = i % 6 if i else 0
            if i < len(given.get(s.name, ())):
                value = given[s.name][i]
            elif shape == 1:
                value = bytes(n)
            elif shape == 2:
                value = b"\xff" * n
            elif shape == 3:
                words = bytearray(rng.randbytes(n))
                for w in range(0, n, 2):
                    if rng.random() < 0.5:
                        words[w:w + 2] = bytes(len(words[w:w + 2]))
                value = bytes(words)
            elif shape == 4 and n > 1:
                keep = rng.randrange(1, n)
                value = first[s.name][:keep] + rng.randbytes(n - keep)
            else:
                value = rng.randbytes(n)
            first.setdefault(s.name, value)
            values.append((s.name, value))
        trials.append(TrialInput(i, tuple(values)))
    return trials


@dataclass
class TrialRun:
    """What one trial did and showed."""

    trial: TrialInput
    trace: Trace
    status: int
    stdout: bytes
    stderr: bytes
    error: str = ""  # the one-line report of a guest error (crash, limit), if any
    where: dict[int, Place] = field(default_factory=dict)  # full runs: the trace's code


@dataclass(frozen=True)
class Place:
    """Where a runtime address of a trace is in the program: the original instruction it
    stands for (code-cache addresses map back to it), its module and symbolic name."""

    original: int  # runtime address of the original instruction
    module: str  # file name of its module ("" when in no module)
    module_path: str
    link_address: int  # in the module's own numbering
    symbolic: str  # ``symbol+0xOFF`` (main program) or ``lib.so:symbol+0xOFF``
    is_main: bool


@dataclass(frozen=True)
class Observation:
    """What to record: observers, the memory unit, latency classes, full traces or not."""

    observers: tuple[str, ...]
    unit: int
    latency_classes: tuple[str, ...]
    full: bool = False


@dataclass
class TrialSetup:
    """Everything that is the same in every trial."""

    binary: str
    contract: Contract
    mode: Mode
    regions: Sequence[RegionRequest] = ()
    hardener_factory: Callable[[], Hardener] | None = None
    max_insns: int = 0

    def argv(self, t: TrialInput) -> list[str]:
        args = list(self.contract.check.args)
        for secret, (_, value) in zip(self.contract.secrets, t.values, strict=True):
            if isinstance(secret.source, ArgvSource):
                text = os.fsdecode(secret.render(value))
                n = secret.source.index
                if n - 1 < len(args):
                    args[n - 1] = text
                else:
                    args.append(text)
        return [self.binary, *args]

    def env(self, t: TrialInput) -> list[str]:
        env = dict(self.contract.check.env)
        for secret, (_, value) in zip(self.contract.secrets, t.values, strict=True):
            if isinstance(secret.source, EnvSource):
                env[secret.source.name] = os.fsdecode(secret.render(value))
        return [f"{k}={v}" for k, v in sorted(env.items())]

    def stdin(self, t: TrialInput) -> bytes:
        data = bytearray((self.contract.check.stdin or "").encode())
        for secret, (_, value) in zip(self.contract.secrets, t.values, strict=True):
            if isinstance(secret.source, StdinSource):
                _overwrite(data, secret.source.offset, secret.render(value))
        return bytes(data)

    def files(self, t: TrialInput) -> dict[str, bytes]:
        """Files holding secrets (relative guest path -> contents)."""
        out: dict[str, bytearray] = {}
        for secret, (_, value) in zip(self.contract.secrets, t.values, strict=True):
            if isinstance(secret.source, FileSource):
                path = secret.source.path
                if os.path.isabs(path):
                    raise UsageError(f"secret {secret.name}: leakdbt check writes file "
                                     "secrets into a fresh working directory, so the path "
                                     f"must be relative, not {path!r}")
                if path not in out:
                    out[path] = bytearray(_read_or_empty(path))
                _overwrite(out[path], secret.source.offset, secret.render(value))
        return {p: bytes(d) for p, d in out.items()}

    @contextlib.contextmanager
    def inputs(self, t: TrialInput) -> Iterator[tuple[ExecOptions, IO[bytes], IO[bytes]]]:
        """The trial's inputs in place — argv, environment, standard input, file secrets in a
        fresh working directory — as the options of its run, with the files that collect
        its standard output and error."""
        files = self.files(t)
        with tempfile.TemporaryDirectory(prefix="leakdbt-trial-") as work, \
                tempfile.TemporaryFile() as stdin, tempfile.TemporaryFile() as out, \
                tempfile.TemporaryFile() as err:
            stdin.write(self.stdin(t))
            stdin.seek(0)
            for path, data in files.items():
                full = os.path.join(work, path)
                os.makedirs(os.path.dirname(full), exist_ok=True)
                with open(full, "wb") as f:
                    f.write(data)
            yield ExecOptions(
                argv=self.argv(t), env=self.env(t), cwd=work if files else None,
                max_insns=self.max_insns, regions=self.regions, mode=self.mode,
                hardener=self.hardener_factory() if self.hardener_factory else None,
                stdio=(stdin.fileno(), out.fileno(), err.fileno()),
                virtual_time=VIRTUAL_TIME_SEED), out, err

    def run(self, t: TrialInput, what: Observation) -> TrialRun:
        """Run one trial and observe it."""
        observers: list[RunObserver] = []
        dispatchers: list[Dispatcher | None] = []
        maps: list[ModuleMap] = []
        with self.inputs(t) as (options, out, err):

            def start(machine: Machine, dispatcher: Dispatcher | None) -> None:
                dispatchers.append(dispatcher)
                observers.append(self._attach(machine, maps[0], t, what))

            options.on_modules = maps.append
            options.on_start = start
            error = ""
            started = time.perf_counter_ns()
            try:
                status = execute(self.binary, options).exit_status
            except GuestError as e:
                status, error = e.exit_status, e.one_line()
            if observers[0].everywhere:  # the whole run is the scope
                observers[0].trace.scope_ns = time.perf_counter_ns() - started
            out.seek(0)
            err.seek(0)
            run = TrialRun(t, observers[0].trace, status, out.read(), err.read(), error)
            if what.full:
                run.where = _locations(observers[0], maps[0], dispatchers[0])
            return run

    def _attach(self, machine: Machine, modules: ModuleMap, t: TrialInput, what: Observation
                ) -> RunObserver:
        """Observers, and the writers of register, buffer and global secrets — for the
        modules loaded now and for those the guest loads later."""
        binding = self.contract.binding
        assert binding is not None
        scoped = [(f.module, f.start) for f in binding.functions]
        observer = RunObserver(machine, what.observers, what.unit, what.latency_classes,
                               [] if scoped else None, what.full)
        writers: list[tuple[tuple[str | None, int], Callable[..., None]]] = []
        globals_: list[tuple[str | None, int, bytes]] = []
        for secret, resolved, (_, value) in zip(self.contract.secrets, binding.secrets,
                                                t.values, strict=True):
            source = secret.source
            if isinstance(source, RegisterSource | PointerSource) and resolved is not None \
                    and resolved.function is not None:
                writers.append(((resolved.function.module, resolved.function.start),
                                _register_writer(machine, source, value)))
            elif isinstance(source, SymbolSource) and resolved is not None \
                    and resolved.span is not None:
                span = resolved.span.start
                globals_.append((span.module, span.address, value))

        def on_module(mod: LoadedModule) -> None:
            for entry in entries_in(scoped, mod):
                observer.add_scope(entry)
            for where, write in writers:
                for entry in entries_in([where], mod):
                    machine.uc.hook_add(UC_HOOK_CODE, machine.guard(write), None, entry, entry)
            for module, address, value in globals_:
                if mod.is_named(module):
                    machine.mem.write(address + mod.base, value)

        for mod in modules.modules():
            on_module(mod)
        modules.listeners.append(on_module)
        uc: Any = machine.uc  # ctl_flush_tb is missing from the stubs
        uc.ctl_flush_tb()  # the hooks apply to code translated before them too
        return observer


def _register_writer(machine: Machine, source: RegisterSource | PointerSource, value: bytes
                     ) -> Callable[[Any, int, int, Any], None]:
    """A code hook that writes ``value`` into the register, or the buffer it points to."""
    reg = source.register
    if reg.startswith("xmm"):
        const = getattr(x, f"UC_X86_REG_{reg.upper()}")
        number = int.from_bytes(value[:16].ljust(16, b"\0"), "little")
    else:
        const = getattr(x, f"UC_X86_REG_{reg.upper()}")
        number = int.from_bytes(value[:8].ljust(8, b"\0"), "little")

    def write(uc: Any, address: int, size: int, _ud: object) -> None:
        if isinstance(source, PointerSource):
            machine.mem.write(uc.reg_read(const), value)
        else:
            uc.reg_write(const, number)
    return write


def _locations(observer: RunObserver, modules: ModuleMap, dispatcher: Dispatcher | None
               ) -> dict[int, Place]:
    """Where every address of a full trace is (see :class:`Place`)."""
    t = observer.trace
    addresses = {a for block in t.blocks for a in block[:2]} \
        | {pc for _, pc, _, _ in t.memory} | {pc for _, pc, _ in t.latency}
    out = {}
    for a in addresses:
        orig = dispatcher.original_of(a) if dispatcher is not None else None
        target = a if orig is None else orig
        mod = modules.find(target)
        if mod is None:
            out[a] = Place(target, "", "", target, f"{target:#x}", False)
        else:
            out[a] = Place(target, mod.name, mod.host_path, target - mod.base,
                           modules.symbolize(target), mod.is_main)
    return out


def _overwrite(data: bytearray, offset: int, value: bytes) -> None:
    if len(data) < offset + len(value):
        data.extend(bytes(offset + len(value) - len(data)))
    data[offset:offset + len(value)] = value


def _read_or_empty(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""
