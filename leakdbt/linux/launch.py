"""Start a program the way Linux's execve does: map the ELF (and its interpreter), build the
initial stack with argv, envp and the auxiliary vector (System V AMD64 ABI, section 3.4), and
run it on a Machine with the system-call layer attached."""

from __future__ import annotations

import fcntl
import os
import stat
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from leakdbt.dbt.dispatch import Dispatcher, Mode, RegionRequest
from leakdbt.dbt.harden import Hardener
from leakdbt.errors import ElfError, GuestError
from leakdbt.linux.files import FdTable, OpenFile
from leakdbt.linux.fs import FileSystem
from leakdbt.linux.kernel import Kernel, ProcessIds, VirtualTime
from leakdbt.linux.modules import ModuleMap
from leakdbt.linux.syscalls import SyscallDispatcher
from leakdbt.loader.elf import load_image
from leakdbt.loader.image import PF_R, PF_W, PF_X, ElfKind, Image
from leakdbt.machine.cpu import hwcap
from leakdbt.machine.machine import Machine
from leakdbt.machine.memory import MMAP_TOP, PAGE, page_down, page_up
from leakdbt.monitor.monitor import Monitor

ELF_ET_DYN_BASE = 0x5555_5555_4000  # where Linux puts a PIE main program (no ASLR)
STACK_TOP = 0x7FFF_FFFF_F000
STACK_SIZE = 8 << 20

# Auxiliary vector entry types (<linux/auxvec.h>, <asm/auxvec.h>).
AT_NULL, AT_PHDR, AT_PHENT, AT_PHNUM, AT_PAGESZ = 0, 3, 4, 5, 6
AT_BASE, AT_FLAGS, AT_ENTRY = 7, 8, 9
AT_UID, AT_EUID, AT_GID, AT_EGID, AT_PLATFORM, AT_HWCAP, AT_CLKTCK = 11, 12, 13, 14, 15, 16, 17
AT_SECURE, AT_RANDOM, AT_HWCAP2, AT_EXECFN, AT_MINSIGSTKSZ = 23, 25, 26, 31, 51


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


@dataclass
class ExecResult:
    """How the run ended, and what --stats reports."""

    exit_status: int
    wall_time: float
    syscalls: dict[str, int] = field(default_factory=dict)
    instructions: int | None = None
    blocks_translated: int | None = None
    translation: dict[str, object] | None = None  # Dispatcher.report(), when translating


def _prot(flags: int) -> int:
    return (1 if flags & PF_R else 0) | (2 if flags & PF_W else 0) | (4 if flags & PF_X else 0)


def map_image(machine: Machine, image: Image, bias: int) -> None:
    """Map every PT_LOAD segment of ``image`` at ``bias`` with its own permissions."""
    pages: dict[int, int] = {}
    for seg in image.segments:
        for p in range(page_down(seg.vaddr + bias), page_up(seg.end + bias), PAGE):
            pages[p] = pages.get(p, 0) | _prot(seg.flags)
    # Map runs of consecutive pages that share permissions.
    runs: list[list[int]] = []  # [start, end, prot]
    for p in sorted(pages):
        if runs and runs[-1][1] == p and runs[-1][2] == pages[p]:
            runs[-1][1] = p + PAGE
        else:
            runs.append([p, p + PAGE, pages[p]])
    for start, end, prot in runs:
        machine.mem.map(start, end - start, prot, image.path)
    for seg in image.segments:
        if seg.filesz:
            machine.mem.write(seg.vaddr + bias, image.data[seg.offset:seg.offset + seg.filesz])


def _phdr_address(image: Image, bias: int) -> int:
    for seg in image.segments:
        if seg.offset <= image.phoff < seg.offset + seg.filesz:
            return bias + seg.vaddr + image.phoff - seg.offset
    return 0


def build_stack(machine: Machine, argv: Sequence[str], env: Sequence[str],
                auxv: list[tuple[int, int]], execfn: str, random16: bytes) -> int:
    """Write argc/argv/envp/auxv and their strings below STACK_TOP; return the initial rsp."""
    machine.mem.map(STACK_TOP - STACK_SIZE, STACK_SIZE, 3, "[stack]")
    sp = STACK_TOP

    def push_bytes(data: bytes) -> int:
        nonlocal sp
        sp -= len(data)
        machine.mem.write(sp, data)
        return sp

    execfn_addr = push_bytes(os.fsencode(execfn) + b"\0")
    env_addrs = [push_bytes(os.fsencode(e) + b"\0") for e in reversed(env)][::-1]
    arg_addrs = [push_bytes(os.fsencode(a) + b"\0") for a in reversed(argv)][::-1]
    platform_addr = push_bytes(b"x86_64\0")
    sp &= ~0xF
    random_addr = push_bytes(random16)  # AT_RANDOM
    auxv = auxv + [(AT_RANDOM, random_addr), (AT_EXECFN, execfn_addr),
                   (AT_PLATFORM, platform_addr), (AT_NULL, 0)]
    words = [len(argv), *arg_addrs, 0, *env_addrs, 0]
    for key, value in auxv:
        words += [key, value]
    sp = (sp - 8 * len(words)) & ~0xF
    machine.mem.write(sp, struct.pack(f"<{len(words)}Q", *words))
    return sp


def _ids() -> ProcessIds:
    return ProcessIds(pid=os.getpid(), ppid=os.getppid(), uid=os.getuid(), gid=os.getgid(),
                      euid=os.geteuid(), egid=os.getegid())


def _interpreter_path(fs: FileSystem, binary: str, interpreter: str) -> str:
    """Host path of the program interpreter, looked up in the guest file system."""
    try:
        node = fs.resolve(interpreter)
    except OSError as e:
        raise ElfError(binary, f"interpreter {interpreter}: {e.strerror or e}") from None
    if not node.host or node.st is None or not stat.S_ISREG(node.st.st_mode):
        raise ElfError(binary, f"interpreter {interpreter} is not a regular file in the guest "
                               "file system")
    return node.host


def guest_exe_path(binary: str, root: str) -> str:
    """The path the guest sees for the program (inside --root when it lies there)."""
    host = os.path.abspath(binary)
    root = os.path.abspath(root)
    if root == "/":
        return host
    rel = os.path.relpath(host, root)
    return host if rel.startswith("..") else "/" + ("" if rel == "." else rel)


def _symbolize_copies(symbolize: Callable[[int], str], translator: Dispatcher
                      ) -> Callable[[int], str]:
    """Name code-cache addresses after the original instruction they are a copy of."""
    def name(address: int) -> str:
        original = translator.original_of(address)
        if original is None:
            return symbolize(address)
        return f"{symbolize(original)} (translated copy at {address:#x})"

    return name


def _fd_table(stdio: tuple[int, int, int] | None) -> FdTable:
    """The guest's first file descriptors: ours, or the host fds ``stdio`` names."""
    if stdio is None:
        return FdTable()
    fds = FdTable(stdio=False)
    for guest_fd, host_fd in enumerate(stdio):
        fds.install_at(guest_fd, OpenFile(host_fd=host_fd, flags=fcntl.fcntl(host_fd,
                                                                             fcntl.F_GETFL),
                                          owned=False))
    return fds


def execute(binary: str, options: ExecOptions,
            on_exit: Callable[[ExecResult], object] | None = None) -> ExecResult:
    """Run ``binary`` to completion under the sandbox; return its exit status and statistics.

    ``on_exit`` sees the result however the run ends (normal exit, crash, limit), before a
    GuestError propagates, so that ``--stats`` is printed for crashes too.
    """
    image = load_image(binary)
    if image.kind is ElfKind.SHARED and image.entry == 0:
        raise ElfError(binary, "a shared library without an entry point cannot be executed")
    exe_path = guest_exe_path(binary, options.root)
    cwd = options.cwd or (os.getcwd() if os.path.abspath(options.root) == "/" else "/")
    fs = FileSystem(root=options.root, rw=list(options.rw), cwd=cwd)
    fs.exe_path = exe_path
    machine = Machine(max_memory=options.max_memory)
    kernel = Kernel(mem=machine.mem, fs=fs, fds=_fd_table(options.stdio), ids=_ids(),
                    mm=machine.mem, exe_path=exe_path, cpu=machine)
    if options.virtual_time is not None:
        VirtualTime(options.virtual_time).apply(kernel)
    machine.symbolize = kernel.modules.symbolize
    dispatcher = SyscallDispatcher(kernel, strict=options.strict)
    machine.syscall_handler = dispatcher
    translator = None
    if options.regions or options.translate_all is not None:
        translator = Dispatcher(machine, kernel.modules, options.regions, options.mode,
                                options.count_entries, options.translate_all,
                                hardener=options.hardener)
        machine.symbolize = _symbolize_copies(kernel.modules.symbolize, translator)

    bias = ELF_ET_DYN_BASE if image.is_pie else 0
    map_image(machine, image, bias)
    kernel.modules.add_image(image, bias, is_main=True)
    machine.mem.brk_start = machine.mem.brk = page_up(bias + image.high)

    entry = image.entry + bias
    interp_base = 0
    if image.interpreter:
        interp = load_image(_interpreter_path(fs, binary, image.interpreter))
        if not interp.is_pie:
            raise ElfError(binary, f"interpreter {image.interpreter} is not position independent")
        interp_base = machine.mem.find_free(interp.high - interp.low, MMAP_TOP) - interp.low
        map_image(machine, interp, interp_base)
        kernel.modules.add_image(interp, interp_base)
        entry = interp.entry + interp_base

    auxv = [(AT_PHDR, _phdr_address(image, bias)), (AT_PHENT, image.phentsize),
            (AT_PHNUM, image.phnum), (AT_PAGESZ, PAGE), (AT_BASE, interp_base), (AT_FLAGS, 0),
            (AT_ENTRY, image.entry + bias), (AT_UID, kernel.ids.uid),
            (AT_EUID, kernel.ids.euid), (AT_GID, kernel.ids.gid), (AT_EGID, kernel.ids.egid),
            (AT_SECURE, 0), (AT_HWCAP, hwcap()), (AT_HWCAP2, 0), (AT_CLKTCK, 100),
            (AT_MINSIGSTKSZ, 2048)]
    sp = build_stack(machine, options.argv, options.env, auxv, exe_path, kernel.entropy(16))
    machine.set_reg("rsp", sp)

    if on_exit is not None:
        machine.count_blocks()
    start = time.perf_counter()
    status = 0
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
    try:
        machine.run(entry, max_insns=options.max_insns, timeout=options.timeout,
                    count_insns=options.count_insns)
        status = kernel.exit_status or 0
    except GuestError as e:
        status = e.exit_status
        raise
    finally:
        if monitor is not None:
            monitor.stop()
        kernel.fds.close_all()
        result = ExecResult(exit_status=status, wall_time=time.perf_counter() - start,
                            syscalls=dict(dispatcher.counts),
                            instructions=machine.instructions_executed(),
                            blocks_translated=machine.blocks_translated,
                            translation=translator.report() if translator else None)
        if monitor is not None and result.translation is not None:
            result.translation["monitor"] = monitor.report()
        if on_exit is not None:
            on_exit(result)
    return result
