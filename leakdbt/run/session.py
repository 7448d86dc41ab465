"""One run of a guest program: load it, set up the process (leakdbt.linux.process), attach the
system-call layer, the translator and the monitor when asked for, and run it to its end.

This is the only place that wires the layers below it together for a run."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

from leakdbt.dbt.mode import Mode
from leakdbt.errors import ElfError, GuestError
from leakdbt.linux.fs import FileSystem, require_executable
from leakdbt.linux.kernel import Kernel, VirtualTime
from leakdbt.linux.process import (
    AT_BASE,
    AT_CLKTCK,
    AT_EGID,
    AT_ENTRY,
    AT_EUID,
    AT_FLAGS,
    AT_GID,
    AT_HWCAP,
    AT_HWCAP2,
    AT_MINSIGSTKSZ,
    AT_PAGESZ,
    AT_PHDR,
    AT_PHENT,
    AT_PHNUM,
    AT_SECURE,
    AT_UID,
    ELF_ET_DYN_BASE,
    build_stack,
    entry_address,
    fd_table,
    guest_exe_path,
    interpreter_file,
    map_image,
    phdr_address,
    process_ids,
)
from leakdbt.linux.sigdeliver import after_syscall, deliver_fault
from leakdbt.linux.sys_exec import ExecImage, Kept, Program, keep
from leakdbt.linux.syscalls import SyscallDispatcher
from leakdbt.linux.timers import HostWaker
from leakdbt.loader.elf import load_image
from leakdbt.loader.image import ElfKind
from leakdbt.loader.modules import ModuleMap
from leakdbt.machine.cpu import hwcap
from leakdbt.machine.machine import Machine
from leakdbt.machine.memory import MMAP_TOP, PAGE, page_up

if TYPE_CHECKING:  # the translator and the monitor are imported only by runs that use them
    from leakdbt.dbt.dispatch import Dispatcher, RegionRequest
    from leakdbt.dbt.harden import Hardener
    from leakdbt.monitor.monitor import Monitor


@dataclass
class ExecOptions:
    """What ``leakdbt exec`` was asked to do."""

    argv: Sequence[str]
    env: Sequence[str]
    root: str = "/"
    rw: Sequence[str] = ()
    cwd: str | None = None
    strict: bool = False
    max_insns: int = 0
    count_insns: bool = False
    timeout: float = 0.0
    max_memory: int = 0
    regions: Sequence[RegionRequest] = ()  # contract regions to translate
    mode: Mode = Mode.HARDENED  # which cache they run from
    count_entries: bool = False  # count region entries per mode (a hook per entry)
    translate_all: Sequence[str] | None = None  # functions to relocate ([]: all), or off
    on_start: Callable[[Machine, Dispatcher | None], object] | None = None  # before running
    on_modules: Callable[[ModuleMap], object] | None = None  # the module map, before on_start
    hardener: Hardener | None = None  # applies the contract's passes to its regions
    stdio: tuple[int, int, int] | None = None  # host fds for guest 0-2 (default: our own)
    monitor: Callable[[Dispatcher], Monitor] | None = None  # adaptive mode: makes the monitor
    virtual_time: int | None = None  # seed: deterministic entropy and clocks (VirtualTime)
    # --stats with a contract: count entries, blocks and instructions in the contract's scope
    # (run/scope.py); scope_functions None is the whole run.
    count_scope: bool = False
    scope_functions: Sequence[tuple[str | None, int]] | None = None


@dataclass
class ExecResult:
    """How the run ended, and what --stats reports."""

    exit_status: int
    wall_time: float
    syscalls: dict[str, int] = field(default_factory=dict)
    instructions: int | None = None
    blocks_translated: int | None = None
    translation: dict[str, object] | None = None  # Dispatcher.report(), when translating
    scope: dict[str, int] | None = None  # ScopeCounter.report(), with count_scope


def _symbolize_copies(symbolize: Callable[[int], str], translator: Dispatcher
                      ) -> Callable[[int], str]:
    """Name code-cache addresses after the original instruction they are a copy of."""
    def name(address: int) -> str:
        original = translator.original_of(address)
        if original is None:
            return symbolize(address)
        return f"{symbolize(original)} (translated copy at {address:#x})"

    return name


_ADOPTED: set[int] = set()  # processes forked outside a guest fork (adopt_this_process)


def adopt_this_process() -> None:
    """This process, forked by leakdbt itself in the middle of a run (``check``'s snapshot,
    leakdbt.leakage.snapshot), returns from :func:`execute` as the first process does,
    instead of ending there as a guest fork's child does."""
    _ADOPTED.add(os.getpid())


def _is_owner(owner: int) -> bool:
    return os.getpid() == owner or os.getpid() in _ADOPTED


def execute(binary: str, options: ExecOptions,
            on_exit: Callable[[ExecResult], object] | None = None) -> ExecResult:
    """Run ``binary`` to completion under the sandbox; return its exit status and statistics.

    ``on_exit`` sees the result however the run ends (normal exit, crash, limit), before a
    GuestError propagates, so that ``--stats`` is printed for crashes too.

    An execve of the guest replaces the image here: the next one runs on a fresh machine
    with the kept file system, fds, ids and signal state, and without the contract's
    regions, observers or monitor (they belong to the first binary; docs/cli.md).  A guest
    fork makes this a host fork: the child process ends inside this call with the guest's
    status (leakdbt.run.child), never returning into the caller's code.
    """
    owner = os.getpid()
    started = time.monotonic()  # --timeout covers loading, and every image exec'd

    def report(result: ExecResult) -> None:
        if on_exit is not None and _is_owner(owner):  # --stats: the first process's
            on_exit(result)

    reporter = report if on_exit is not None else None

    replaced: tuple[Kept, Program] | None = None
    try:
        while True:
            try:
                result = _run_image(binary, options, reporter, started, replaced)
                break
            except ExecImage as e:
                if e.kept is None:
                    raise
                replaced = (e.kept, e.program)
                e.__traceback__ = None  # let the old image's machine go
                binary = e.program.host_path
                options = dataclasses.replace(
                    options, argv=e.program.argv, env=e.env, regions=(), translate_all=None,
                    on_start=None, on_modules=None, hardener=None, monitor=None,
                    count_entries=False, count_scope=False, scope_functions=None)
    except BaseException as e:
        if not _is_owner(owner):
            from leakdbt.run.child import end_child

            end_child(e)
        raise
    if not _is_owner(owner):
        from leakdbt.run.child import exit_child

        exit_child(result.exit_status)
    return result


def _run_image(binary: str, options: ExecOptions,
               on_exit: Callable[[ExecResult], object] | None,
               loading_started: float, replaced: tuple[Kept, Program] | None
               ) -> ExecResult:
    """Load and run one image: ``binary``, or the one an execve asked for (``replaced``:
    the kernel that asked, and its request)."""
    image = load_image(binary, replaced[1].data if replaced else None)
    if image.kind is ElfKind.SHARED and image.entry == 0:
        raise ElfError(binary, "a shared library without an entry point cannot be executed")
    if replaced is None:
        exe_path = guest_exe_path(binary, options.root)
        cwd = options.cwd or (os.getcwd() if os.path.abspath(options.root) == "/" else "/")
        fs = FileSystem(root=options.root, rw=list(options.rw), cwd=cwd)
        fds, ids = fd_table(options.stdio), process_ids()
    else:
        old = replaced[0]
        exe_path, fs, fds, ids = replaced[1].guest_path, old.fs, old.fds, old.ids
    fs.exe_path = exe_path
    machine = Machine(max_memory=options.max_memory)
    kernel = Kernel(mem=machine.mem, fs=fs, fds=fds, ids=ids, exe_path=exe_path, cpu=machine)
    if options.timeout:  # the guest's host waits end there too, not only its engine runs
        kernel.timeout = (options.timeout, loading_started + options.timeout)
    if options.virtual_time is not None:
        VirtualTime(options.virtual_time).apply(kernel)
    if replaced is not None:  # what execve keeps of the process
        replaced[0].apply(kernel)
    machine.symbolize = kernel.modules.symbolize
    syscalls = SyscallDispatcher(kernel, strict=options.strict)
    machine.syscall_handler = syscalls
    machine.on_fault = partial(deliver_fault, kernel)
    waker = None
    if options.virtual_time is None:  # host time: timers interrupt a spinning guest too
        waker = kernel.timers.waker = HostWaker(
            lambda: machine.defer(partial(after_syscall, kernel)))
    translator = None
    allocations = None
    if options.regions or options.translate_all is not None:
        from leakdbt.dbt.dispatch import Dispatcher
        from leakdbt.run.allocations import AllocationBounds

        # Watches the allocator once hardened code asks for bounds (heap tables) — from the
        # start when a table region has no bounds in the contract, since a region may be
        # translated only at its first entry (leakdbt.run.allocations).
        allocations = AllocationBounds(machine, kernel.modules)
        if any(r.needs is not None and r.needs.kind == "table" and r.needs.table is None
               for r in options.regions):
            allocations.activate()
        translator = Dispatcher(machine, kernel.modules, options.regions, options.mode,
                                options.count_entries, options.translate_all,
                                hardener=options.hardener, bounds=allocations)
        machine.symbolize = _symbolize_copies(kernel.modules.symbolize, translator)

    bias = ELF_ET_DYN_BASE if image.is_pie else 0
    map_image(machine, image, bias)
    kernel.modules.add_image(image, bias, is_main=True)
    machine.mem.brk_start = machine.mem.brk = page_up(bias + image.high)

    entry = entry_address(image, bias)
    interp_base = 0
    if image.interpreter:
        interp = load_image(*interpreter_file(fs, binary, image.interpreter))
        if not interp.is_pie:
            raise ElfError(binary, f"interpreter {image.interpreter} is not position independent")
        interp_base = machine.mem.find_free(interp.high - interp.low, MMAP_TOP) - interp.low
        map_image(machine, interp, interp_base)
        kernel.modules.add_image(interp, interp_base)
        entry = entry_address(interp, interp_base)
    # After loading, so that a malformed file is reported as bad input (status 2) first.
    require_executable(binary)

    auxv = [(AT_PHDR, phdr_address(image, bias)), (AT_PHENT, image.phentsize),
            (AT_PHNUM, image.phnum), (AT_PAGESZ, PAGE), (AT_BASE, interp_base), (AT_FLAGS, 0),
            (AT_ENTRY, entry_address(image, bias)), (AT_UID, kernel.ids.uid),
            (AT_EUID, kernel.ids.euid), (AT_GID, kernel.ids.gid), (AT_EGID, kernel.ids.egid),
            (AT_SECURE, 0), (AT_HWCAP, hwcap()), (AT_HWCAP2, 0), (AT_CLKTCK, 100),
            (AT_MINSIGSTKSZ, 2048)]
    sp = build_stack(machine, options.argv, options.env, auxv, exe_path, kernel.entropy(16))
    machine.set_reg("rsp", sp)

    if on_exit is not None:
        machine.count_blocks()
    start = time.perf_counter()
    status = 0
    scope = None
    if options.count_scope:
        from leakdbt.run.scope import ScopeCounter

        scope = ScopeCounter(machine, kernel.modules, options.scope_functions)
    if options.on_modules is not None:
        options.on_modules(kernel.modules)
    if options.on_start is not None:
        options.on_start(machine, translator)
    monitor = None
    if options.monitor is not None and translator is not None:
        monitor = options.monitor(translator)
        monitor.step()  # the starting cache, before the guest runs
    if translator is not None:
        translator.running = True
    if monitor is not None:
        monitor.start()
    exec_request: ExecImage | None = None
    try:
        machine.run(entry, max_insns=options.max_insns, timeout=options.timeout,
                    count_insns=options.count_insns, since=loading_started)
        status = kernel.exit_status or 0
    except ExecImage as e:  # the guest's execve: the session runs the next image
        e.kept = keep(kernel)
        exec_request = e
        raise
    except GuestError as e:
        status = e.exit_status
        raise
    finally:
        if waker is not None:
            waker.close()
        if monitor is not None:
            monitor.stop()
        if exec_request is None:
            kernel.fds.close_all()
        else:
            kernel.fds.close_on_exec()
        result = ExecResult(exit_status=status, wall_time=time.perf_counter() - start,
                            syscalls=dict(syscalls.counts),
                            instructions=machine.instructions_executed(),
                            blocks_translated=machine.blocks_translated,
                            translation=translator.report() if translator else None,
                            scope=scope.report() if scope is not None else None)
        if allocations is not None and allocations.active and result.translation is not None:
            result.translation["heap-table bounds"] = allocations.report()
        if monitor is not None and result.translation is not None:
            result.translation["monitor"] = monitor.report()
        if on_exit is not None and exec_request is None:
            on_exit(result)
    return result
