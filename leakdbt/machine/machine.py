"""The Machine: the only owner of the Unicorn engine.

It runs guest code, reports faults as :class:`~leakdbt.errors.GuestFault` with a symbolised
location, hands ``syscall`` instructions to the Linux layer, and stops on limits.  Hooks never
swallow exceptions: a hook stores what it raised, stops the engine, and :meth:`Machine.run`
re-raises it (see docs/architecture.md).
"""

from __future__ import annotations

import ctypes
import functools
import signal
import struct
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from unicorn import (
    UC_ARCH_X86,
    UC_HOOK_CODE,
    UC_HOOK_EDGE_GENERATED,
    UC_HOOK_INSN,
    UC_HOOK_INSN_INVALID,
    UC_HOOK_INTR,
    UC_HOOK_TLB_FILL,
    UC_MODE_64,
    UC_TLB_VIRTUAL,
    Uc,
    UcError,
)
from unicorn import unicorn_const as ucc
from unicorn import x86_const as x86
from unicorn.unicorn_py3.unicorn import uclib

from leakdbt.errors import (
    EmulatorError,
    GuestError,
    GuestFault,
    LimitExceeded,
    UnsupportedInstruction,
)
from leakdbt.machine import vex
from leakdbt.machine.blockcount import BlockCounter, block_counter
from leakdbt.machine.cpu import guest_cpuid
from leakdbt.machine.hooks import Hooks
from leakdbt.machine.memory import (
    PAGE,
    PROT_EXEC,
    PROT_READ,
    USER_TOP,
    AddressSpace,
    GuestMemoryFault,
)
from leakdbt.x86.insn import detail_decoder
from leakdbt.x86.registers import WIDTH

# The engine needs an address at which to stop, and it probes that page through the TLB after
# memory-map changes.  We give it the page just above the last user page (Linux's TASK_SIZE),
# which no guest mapping can cover.  The guest never reaches it (it exits through exit_group),
# and the page is invisible to it: a jump or access there is a SIGSEGV like any unmapped
# address (the int3 fill is a second line of defence).
STOP_ADDRESS = USER_TOP + 0x10  # the engine probes the page of STOP_ADDRESS - 1 too

# VEX instructions at most this many bytes apart share one range hook.  The hook checks the
# bytes of whatever instruction runs in its range, so an ordinary instruction between two
# VEX ones only costs a callback; 32 bytes keeps such ranges inside one AVX routine (glibc's
# static hello-world: 966 VEX instructions in 99 hooks instead of 966).
VEX_HOOK_GAP = 32

# Register name (leakdbt.x86.registers) -> the engine's number for it: the only such map.
_uc_reg_read = uclib.uc_reg_read
MAX_SPURIOUS_STOPS = 100
MAX_HELD_QUANTA = 1000  # a scoped call longer than this many quanta is preempted anyway
REGS: dict[str, int] = {name: getattr(x86, f"UC_X86_REG_{name.upper()}") for name in WIDTH}
_REG_MASKS = {name: (1 << 8 * width) - 1 for name, width in WIDTH.items()}

# Exception vector -> (signal, what Linux would call it, the si_code a handler sees).
SI_KERNEL = 0x80
SEGV_MAPERR, SEGV_ACCERR = 1, 2
VECTOR_SIGNALS: dict[int, tuple[int, str, int]] = {
    0: (signal.SIGFPE, "divide error", 1),  # FPE_INTDIV
    1: (signal.SIGTRAP, "debug trap", 2),  # TRAP_TRACE
    3: (signal.SIGTRAP, "breakpoint (int3)", SI_KERNEL),
    4: (signal.SIGSEGV, "overflow trap (into)", SI_KERNEL),
    5: (signal.SIGSEGV, "bound range exceeded", SI_KERNEL),
    6: (signal.SIGILL, "invalid opcode", 2),  # ILL_ILLOPN
    7: (signal.SIGFPE, "device not available", SI_KERNEL),
    13: (signal.SIGSEGV, "general protection fault", SI_KERNEL),
    14: (signal.SIGSEGV, "page fault", SEGV_MAPERR),
    16: (signal.SIGFPE, "x87 floating-point exception", 0),
    17: (signal.SIGBUS, "alignment check", 1),  # BUS_ADRALN
    19: (signal.SIGFPE, "SIMD floating-point exception", 0),
}
# Vectors whose si_addr is the faulting instruction (Linux's do_error_trap callers).
_ADDR_IS_RIP = {0, 1, 3, 6, 16, 17, 19}
# x86 page-fault error code bits (what a handler reads in sigcontext.err).
PF_PROT, PF_WRITE, PF_USER, PF_INSTR = 1, 2, 4, 16

_UNMAPPED_ERRORS = {
    ucc.UC_ERR_READ_UNMAPPED: "read of unmapped address",
    ucc.UC_ERR_WRITE_UNMAPPED: "write to unmapped address",
    ucc.UC_ERR_FETCH_UNMAPPED: "execution of unmapped address",
    ucc.UC_ERR_READ_PROT: "read of protected address",
    ucc.UC_ERR_WRITE_PROT: "write to protected address",
    ucc.UC_ERR_FETCH_PROT: "execution of non-executable address",
}
_ACCESS_WORDS = {ucc.UC_MEM_READ: "read of", ucc.UC_MEM_WRITE: "write to",
                 ucc.UC_MEM_FETCH: "execution at"}


class Machine:
    """One x86-64 guest CPU with its address space."""

    # False: count instructions with the Python block hook even when the native one is
    # built (tests and bench/run.py compare the two).
    native_counting = True

    def __init__(self, max_memory: int = 0) -> None:
        self.uc = Uc(UC_ARCH_X86, UC_MODE_64)
        self.uc.ctl_set_tlb_mode(UC_TLB_VIRTUAL)  # type: ignore[attr-defined]
        self.mem = AddressSpace(self.uc, max_memory)
        self.hooks = Hooks(self.uc, self._fail)
        self.symbolize: Callable[[int], str] = lambda a: f"{a:#x}"
        self.syscall_handler: Callable[[Machine], None] | None = None
        self.exited = False
        self.blocks_translated: int | None = None
        self._counter: BlockCounter | None = None  # per-block instruction count (blockcount)
        self._pending: BaseException | None = None
        self._vex_hooks: dict[tuple[int, int], int] = {}  # (first, last) -> engine hook
        self.vex_sweeps = vex.sweep_cache()
        self._deferred: list[Callable[[], None]] = []
        self._spurious = 0  # unexplained engine stops resumed (_spurious_stop)
        self.resumable = False  # set by users of defer() before run(): see run()
        # Guest threads (leakdbt.linux.threads): after every ``_quantum`` instructions the
        # engine stops at a block boundary and ``_on_quantum`` runs between two engine runs.
        self._quantum = 0
        self._on_quantum: Callable[[], None] | None = None
        self._next_preempt = 0
        self._max_insns = 0
        self._count_requested = False
        # Called at each guest thread switch with the index (creation order, 0 = the first
        # thread) of the thread that runs from now on (observers say which thread ran).
        self.thread_listeners: list[Callable[[int], None]] = []
        # Asked when a quantum ends: any True holds the switch (a contract's scoped call is
        # running), for at most MAX_HELD_QUANTA quanta in a row.
        self.preemption_holds: list[Callable[[], bool]] = []
        # The addresses where the threads not running now resume (leakdbt.linux.threads):
        # code rewritten between engine runs (the dispatcher's entry jumps) must not cover
        # one, as it must not cover the running thread's rip.
        self.parked_pcs: list[Callable[[], list[int]]] = []
        self._held = 0
        # The guest's signal handling (linux layer): given a synchronous fault, set up the
        # guest's handler and return True (the guest resumes at rip), or False (it dies).
        self.on_fault: Callable[[GuestFault], bool] | None = None
        self.mem.exec_page_listeners.append(self._vet_code_page)
        self.mem.map_reserved(USER_TOP, PAGE, PROT_READ | PROT_EXEC, "[leakdbt stop]",
                              guest=False, engine_fetch=True)
        self.uc.mem_write(USER_TOP, b"\xcc" * PAGE)
        self.uc.hook_add(UC_HOOK_TLB_FILL, self.guard(self.mem.tlb_fill))
        self.uc.hook_add(UC_HOOK_INSN, self.guard(self._on_syscall), None, 1, 0,
                         x86.UC_X86_INS_SYSCALL)
        self.uc.hook_add(UC_HOOK_INSN, self.guard(self._on_cpuid), None, 1, 0,
                         x86.UC_X86_INS_CPUID)
        self.uc.hook_add(UC_HOOK_INTR, self.guard(self._on_interrupt))
        self.uc.hook_add(UC_HOOK_INSN_INVALID, self.guard(self._on_invalid_insn))
        # No UC_HOOK_MEM_* hooks: any memory hook sends every guest load and store down the
        # engine's slow path.  Bad accesses are seen by the TLB fill callback instead.

    # -- registers -------------------------------------------------------------------------

    def reg(self, name: str) -> int:
        """Register ``name`` (any name of leakdbt.x86.registers.WIDTH) now."""
        return int(self.uc.reg_read(REGS[name]))

    def set_reg(self, name: str, value: int) -> None:
        """Write register ``name`` (``value`` truncated to its width)."""
        self.uc.reg_write(REGS[name], value & _REG_MASKS[name])

    def reg_reader(self, name: str) -> Callable[[], int]:
        """A reader of register ``name`` for per-instruction hooks: the name is looked up
        once, not per call."""
        if WIDTH[name] != 8:
            return partial(self.uc.reg_read, REGS[name])
        # The binding's reg_read looks up the register's class on every call (~3 µs);
        # observers read RIP/RSP per memory access, so call the C function directly (~0.8 µs).
        value = ctypes.c_uint64()
        ref, handle, regid, read = ctypes.byref(value), self.uc._uch, REGS[name], _uc_reg_read

        def reader() -> int:
            read(handle, regid, ref)
            return value.value

        return reader

    # -- running -----------------------------------------------------------------------------

    def run(self, entry: int, *, max_insns: int = 0, timeout: float = 0.0,
            count_insns: bool = False, since: float | None = None) -> None:
        """Run from ``entry`` until the guest exits; raise GuestFault/LimitExceeded otherwise.

        ``max_insns`` is enforced exactly by a per-block count and a final engine-counted
        step; ``count_insns`` makes :meth:`instructions_executed` exact without a limit.
        Work handed to :meth:`defer` runs between two engine runs, and the guest resumes
        where it stopped.
        ``timeout`` counts from ``since`` (a ``time.monotonic()`` value; default: now), so
        that it can cover loading.
        """
        start = time.monotonic() if since is None else since
        entry &= 0xFFFF_FFFF_FFFF_FFFF
        if entry >= USER_TOP:  # Linux's execve: SIGSEGV once past the point of no return
            raise self._reserved_fetch(entry)
        self._max_insns, self._count_requested = max_insns, bool(count_insns or max_insns)
        counter = self._count_instructions(max_insns) if count_insns or max_insns else None
        if self._quantum:
            self.restart_quantum()  # set before the run: the limit now includes max_insns
        pc = entry
        while True:
            counter = self._counter  # the threads' quantum may have started one mid-run
            left_time = timeout - (time.monotonic() - start) if timeout else 0.0
            if timeout and left_time <= 0:
                break
            # The block counter stops the engine before a block that would cross the limit;
            # the rest is one engine-counted step (engine counting is slow: it is a code
            # hook on every instruction).
            final = counter is not None and counter.limit_reached
            left = max_insns - counter.done if counter is not None and final else 0
            if final and left <= 0:
                break
            if counter is not None:
                counter.final_step = final
            if final:
                # The engine checks a count only in blocks translated while one is set.
                self.uc.ctl_flush_tb()  # type: ignore[attr-defined]
            try:
                try:
                    self.uc.emu_start(pc, STOP_ADDRESS, timeout=int(left_time * 1e6),
                                      count=left)
                except UcError as e:
                    self._raise_pending()
                    if self.exited:
                        return  # stopping in a syscall hook can surface as a stray engine error
                    raise self._fault_from_error(e) from None
                finally:
                    if counter is not None:
                        counter.final_step = False
                self._raise_pending()
            except GuestFault as fault:
                if counter is not None:
                    # The fault ended its block early: the final step needs the exact count.
                    counter.fault_at(self.reg("rip"))
                if not self._to_guest_handler(fault):
                    raise
                pc = self.reg("rip")
                continue
            if self.exited:
                return
            if final and counter is not None:
                counter.done = max_insns  # the engine ran exactly ``left`` more
                break
            if not (counter is not None and counter.limit_reached) and not self._deferred:
                if self._spurious_stop(start, timeout):
                    pc = self.reg("rip")
                    continue
                break
            while self._deferred:
                self._deferred.pop(0)()
            self._raise_pending()
            self._preempt_if_due()
            pc = self.reg("rip")
        rip = self.reg("rip")
        if USER_TOP <= rip < USER_TOP + PAGE:  # the guest jumped to the stop address
            raise self._reserved_fetch(rip)
        if timeout and time.monotonic() - start >= timeout * 0.99:
            raise LimitExceeded(f"--timeout {timeout:g} s reached at {self.symbolize(rip)}")
        if max_insns:
            raise LimitExceeded(f"--max-insns {max_insns} reached at {self.symbolize(rip)}")
        raise EmulatorError(f"emulation stopped unexpectedly at {self.symbolize(rip)}")

    def _spurious_stop(self, start: float, timeout: float) -> bool:
        """Did the engine stop for no reason of ours, so that the guest should resume?

        With a timeout the engine runs a timer thread, and under ``make fuzz`` about one
        run in a hundred returned from ``emu_start`` early, with no exit, limit, deferred
        work or jump to the stop page (at different instructions each time).  The stop is
        at a block boundary, so resuming at RIP is exact; at most ``MAX_SPURIOUS_STOPS``
        per run, after which the stop is reported as leakdbt's own error."""
        rip = self.reg("rip")
        if (self._spurious >= MAX_SPURIOUS_STOPS or USER_TOP <= rip < USER_TOP + PAGE
                or (timeout and time.monotonic() - start >= timeout * 0.99)):
            return False
        self._spurious += 1
        return True

    def _to_guest_handler(self, fault: GuestFault) -> bool:
        """Hand a synchronous fault to the guest's signal handling (``on_fault``)."""
        if self.on_fault is None or self.exited:
            return False
        self._clear_exception_in_flight()
        self.mem.last_fault = None
        return self.on_fault(fault)

    def _clear_exception_in_flight(self) -> None:
        """Forget the exception the engine last raised.  The engine delivers exceptions to
        our interrupt hook instead of its own interrupt code, which alone resets its
        "exception in flight" field (QEMU's ``old_exception``); left set, the next #DE, #GP
        or #PF after a handled one would arrive as a double fault (vector 8)."""
        offset = _old_exception_offset()
        ctx = self.uc.context_save()
        raw = bytearray(bytes(ctx))
        if struct.unpack_from("<i", raw, offset)[0] == -1:
            return
        struct.pack_into("<i", raw, offset, -1)
        ctypes.memmove(ctx.context, bytes(raw), len(raw))
        self.uc.context_restore(ctx)

    def fxsave(self) -> bytes:
        """The x87/SSE state as the 512-byte FXSAVE image (what a signal frame holds)."""
        tags = self.uc.reg_read(x86.UC_X86_REG_FPTAG)
        abridged = sum(1 << i for i in range(8) if (tags >> 2 * i) & 3 != 3)
        head = struct.pack("<HHBxH", self.uc.reg_read(x86.UC_X86_REG_FPCW),
                           self.uc.reg_read(x86.UC_X86_REG_FPSW), abridged,
                           self.uc.reg_read(x86.UC_X86_REG_FOP))
        head += struct.pack("<QQII", self.uc.reg_read(x86.UC_X86_REG_FIP),
                            self.uc.reg_read(x86.UC_X86_REG_FDP),
                            self.uc.reg_read(x86.UC_X86_REG_MXCSR), 0xFFFF)
        st = b""
        for i in range(8):
            mantissa, exponent = self.uc.reg_read(x86.UC_X86_REG_FP0 + i)
            st += struct.pack("<QH6x", mantissa, exponent)
        xmm = b"".join(self.reg(f"xmm{i}").to_bytes(16, "little") for i in range(16))
        return (head + st + xmm).ljust(512, b"\0")

    def fxrstor(self, image: bytes) -> None:
        """Load the x87/SSE state from a 512-byte FXSAVE image (signal return)."""
        fcw, fsw, abridged, fop = struct.unpack_from("<HHBxH", image, 0)
        mxcsr = struct.unpack_from("<I", image, 24)[0]
        self.uc.reg_write(x86.UC_X86_REG_FPCW, fcw)
        self.uc.reg_write(x86.UC_X86_REG_FPSW, fsw)
        self.uc.reg_write(x86.UC_X86_REG_FPTAG,
                          sum(3 << 2 * i for i in range(8) if not abridged >> i & 1))
        self.uc.reg_write(x86.UC_X86_REG_MXCSR, mxcsr & 0xFFFF)
        for i in range(8):
            mantissa, exponent = struct.unpack_from("<QH", image, 32 + 16 * i)
            self.uc.reg_write(x86.UC_X86_REG_FP0 + i, (mantissa, exponent))
        for i in range(16):
            self.set_reg(f"xmm{i}", int.from_bytes(image[160 + 16 * i:176 + 16 * i], "little"))

    def save_context(self) -> object:
        """The CPU's whole state (registers, FS/GS bases, FPU), for :meth:`restore_context`:
        how a guest thread is switched out."""
        return self.uc.context_save()

    def context_pc(self, context: object) -> int:
        """The rip a state :meth:`save_context` returned resumes at."""
        return int(context.reg_read(REGS["rip"]))  # type: ignore[attr-defined]

    def resume_pcs(self) -> list[int]:
        """Where every guest thread resumes: the running one's rip (between engine runs),
        then the parked ones' (:attr:`parked_pcs`)."""
        return [self.reg("rip"), *(pc for source in self.parked_pcs for pc in source())]

    def restore_context(self, context: object) -> None:
        """Load a state :meth:`save_context` returned (between engine runs)."""
        self.uc.context_restore(context)

    def set_quantum(self, quantum: int, handler: Callable[[], None] | None) -> None:
        """From now on, run ``handler`` between two engine runs each time ``quantum`` more
        guest instructions have run (at the first block boundary past them; 0: never).
        Uses the block counter (started here if the run did not count), so the points are
        the same in every run of the same guest."""
        self._quantum, self._on_quantum = quantum, handler
        if quantum and self._counter is None:
            self._count_instructions(self._max_insns)
            self.uc.ctl_flush_tb()  # type: ignore[attr-defined]  # blocks made before count too
        self.restart_quantum()

    def restart_quantum(self) -> None:
        """Give the code running now a full quantum (after a thread switch)."""
        counter = self._counter
        if counter is None:
            return
        self._next_preempt = counter.done + self._quantum if self._quantum else 0
        limits = [x for x in (self._max_insns, self._next_preempt) if x]
        counter.set_limit(min(limits) if limits else 0)

    def _preempt_if_due(self) -> None:
        """The block counter stopped the engine at the quantum's end (not at --max-insns):
        run the quantum handler and start the next quantum."""
        counter = self._counter
        if (counter is None or not counter.limit_reached or not self._next_preempt
                or (self._max_insns and self._next_preempt >= self._max_insns)):
            return
        counter.clear_limit_reached()
        if self._held < MAX_HELD_QUANTA and any(hold() for hold in self.preemption_holds):
            self._held += 1
        else:
            self._held = 0
            if self._on_quantum is not None:
                self._on_quantum()
        self.restart_quantum()

    def defer(self, work: Callable[[], None]) -> None:
        """Run ``work`` as soon as the engine has stopped (thread-safe: a monitor thread may
        call it); the guest then resumes where it was.  Requires :attr:`resumable`."""
        self._deferred.append(work)
        self.uc.emu_stop()

    def count_blocks(self) -> None:
        """Count translated blocks from now on (the engine's new-edge reports; a lower bound:
        a block first entered after an exception or across a page boundary is not reported)."""
        if self.blocks_translated is None:
            self.blocks_translated = 0

            def edge(uc: Uc, cur: object, prev: object, _ud: object) -> None:
                self.blocks_translated = (self.blocks_translated or 0) + 1

            self.uc.hook_add(UC_HOOK_EDGE_GENERATED, self.guard(edge))

    def _count_instructions(self, limit: int = 0) -> BlockCounter:
        """Count instructions per block (leakdbt/machine/blockcount.py: native when built,
        unless :attr:`native_counting` is off); with ``limit``, stop before the block that
        would cross it (``limit_reached``; run() finishes with an exact engine count)."""
        if self._counter is None:
            self._counter = block_counter(self.uc, limit, self.mem.read_code_view, self._fail,
                                          self.guard, native=self.native_counting)
            self.mem.change_listeners.append(lambda _start, _end: self._forget_code())
        return self._counter

    def instructions_executed(self) -> int | None:
        """Guest instructions run, when counted (with --max-insns or --count-insns; a count
        started mid-run for the threads' quantum is not the run's)."""
        if self._counter is None or not self._count_requested:
            return None
        return self._counter.done

    def instruction_counter(self) -> BlockCounter | None:
        """The block counter of the last counted run (None: instructions not counted)."""
        return self._counter

    def _forget_code(self) -> None:
        if self._counter is not None:
            self._counter.forget_code()

    def stop(self) -> None:
        """Stop the engine at the end of the current instruction (e.g. from a syscall)."""
        self.uc.emu_stop()

    def invalidate_code(self, start: int, end: int) -> None:
        """Drop translated blocks of [start, end) so that changed code is retranslated."""
        self.uc.ctl_remove_cache(start, end)
        self._forget_code()

    def translate_block(self, address: int) -> int:
        """Have the engine translate the block at ``address`` now, ahead of its first run;
        its size in bytes (0: nothing could be translated there)."""
        tb = self.uc.ctl_request_cache(address)
        return tb[2] if tb is not None else 0

    # -- hooks --------------------------------------------------------------------------------

    def guard(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap a hook: store the first exception, stop the engine, re-raise it in run()."""

        def hook(*args: Any) -> Any:
            try:
                return fn(*args)
            except BaseException as e:  # noqa: BLE001 - re-raised by run()
                self._fail(e)
                return False

        return hook

    def _fail(self, e: BaseException) -> None:
        """What a guarded hook does with ``e``: keep the first, stop the engine."""
        if self._pending is None:
            self._pending = e
        self.uc.emu_stop()

    def _raise_pending(self) -> None:
        if self._pending is not None:
            e, self._pending = self._pending, None
            raise e

    def _on_syscall(self, uc: Uc, _ud: object) -> None:
        if self.syscall_handler is None:
            raise EmulatorError("no system-call handler installed")
        self.syscall_handler(self)
        self.mem.last_fault = None  # map changes make the engine probe pages: not guest faults

    def _on_cpuid(self, uc: Uc, _ud: object) -> int:
        eax, ebx, ecx, edx = guest_cpuid(self.reg("rax"), self.reg("rcx"))
        for name, value in (("rax", eax), ("rbx", ebx), ("rcx", ecx), ("rdx", edx)):
            self.set_reg(name, value)
        return 1  # skip the engine's own CPUID

    def _on_interrupt(self, uc: Uc, intno: int, _ud: object) -> None:
        rip = self.reg("rip")
        if intno == 6:
            self._raise_invalid(rip)
        if intno == 3 and USER_TOP <= rip - 1 < USER_TOP + PAGE:
            raise self._reserved_fetch(rip - 1)  # the stop page's int3: invisible to the guest
        signo, what, code = VECTOR_SIGNALS.get(intno, (signal.SIGSEGV, f"interrupt {intno:#x}",
                                                       SI_KERNEL))
        if intno == 14 and self.mem.last_fault:
            addr, access = self.mem.last_fault
            what = f"{_ACCESS_WORDS.get(access, 'access to')} {addr:#x}"
            raise self._segv(rip, self.symbolize(rip), what, addr, access)
        raise GuestFault(signo, rip, self.symbolize(rip), what, code=code, trapno=intno,
                         fault_address=rip if intno in _ADDR_IS_RIP else 0)

    def _segv(self, address: int, where: str, what: str, fault_addr: int,
              access: int) -> GuestFault:
        """The SIGSEGV of a page fault at ``fault_addr``, with Linux's si_code and err."""
        mapped = self.mem.find(fault_addr)
        present = mapped is not None and mapped.guest
        base = _base_access(access)
        if base != ucc.UC_MEM_FETCH:
            fault_addr = self._data_fault_address(fault_addr & ~(PAGE - 1))
        err = (PF_USER | (PF_PROT if present else 0) | (PF_WRITE if base == ucc.UC_MEM_WRITE
               else 0) | (PF_INSTR if base == ucc.UC_MEM_FETCH else 0))
        return GuestFault(signal.SIGSEGV, address, where, what,
                          code=SEGV_ACCERR if present else SEGV_MAPERR,
                          fault_address=fault_addr, trapno=14, error_code=err)

    def _data_fault_address(self, page: int) -> int:
        """The exact address a data access faulted at (the TLB reports only its page): the
        memory operand of the instruction at rip that lies in ``page`` (or crosses into it:
        then the page itself, as the CPU's cr2), else ``page``."""
        rip = self.reg("rip")
        try:
            code = self.mem.read(rip, 15)
        except GuestMemoryFault:
            return page
        from capstone import x86 as cs

        rsp = self.reg("rsp")
        candidates = [rsp - 8, rsp]  # push/call write below rsp; pop/ret read at it
        for ci in detail_decoder().disasm(code, rip, 1):
            for op in ci.operands:
                if op.type != cs.X86_OP_MEM:
                    continue
                m = op.mem
                ea = m.disp + (ci.address + ci.size if m.base == cs.X86_REG_RIP else 0)
                for reg, scale in ((m.base, 1), (m.index, m.scale)):
                    if reg and reg != cs.X86_REG_RIP and ci.reg_name(reg) in REGS:
                        ea += self.reg(ci.reg_name(reg)) * scale
                if m.segment in (cs.X86_REG_FS, cs.X86_REG_GS):
                    ea += self.reg("fs_base" if m.segment == cs.X86_REG_FS else "gs_base")
                candidates.insert(0, ea & 0xFFFF_FFFF_FFFF_FFFF)
        for ea in candidates:
            if page <= ea < page + PAGE:
                return ea
        for ea in candidates:
            if ea < page < ea + 64:  # an access that starts below the page and crosses it
                return page
        return page

    def _reserved_fetch(self, address: int) -> GuestFault:
        """The SIGSEGV Linux gives for a jump to ``address`` above user space."""
        return GuestFault(signal.SIGSEGV, address, self.symbolize(address),
                          f"execution at {address:#x} (unmapped)", code=SEGV_MAPERR,
                          fault_address=address, trapno=14,
                          error_code=PF_USER | PF_INSTR)

    def _on_invalid_insn(self, uc: Uc, _ud: object) -> bool:
        self._raise_invalid(self.reg("rip"))
        return False

    def _raise_invalid(self, rip: int) -> None:
        raise self._invalid_fault(rip)

    def _invalid_fault(self, rip: int) -> GuestError:
        """SIGILL at ``rip``, or UnsupportedInstruction when it is EVEX (AVX-512)."""
        try:
            code = self.mem.read(rip, 16)
        except GuestMemoryFault:  # the instruction bytes are only for the message
            code = b""
        if code[:1] == b"\x62":
            return self._unsupported(rip, code, "EVEX-encoded (AVX-512)")
        return GuestFault(signal.SIGILL, rip, self.symbolize(rip),
                          f"invalid instruction {code[:8].hex(' ')}", code=2,  # ILL_ILLOPN
                          fault_address=rip, trapno=6)

    def _fault_from_error(self, e: UcError) -> BaseException:
        rip = self.reg("rip")
        where = self.symbolize(rip)
        if e.errno == ucc.UC_ERR_INSN_INVALID:
            return self._invalid_fault(rip)
        fault = self.mem.last_fault
        if e.errno in _UNMAPPED_ERRORS or (e.errno == ucc.UC_ERR_EXCEPTION and fault):
            if fault:
                addr, access = fault
                kind = self.mem.find(addr)
                kind = kind if kind is not None and kind.guest else None  # reserved: unmapped
                what = (f"{_ACCESS_WORDS.get(_base_access(access), 'access to')} {addr:#x}"
                        + (" (no permission)" if kind else " (unmapped)"))
                if _base_access(access) == ucc.UC_MEM_FETCH:
                    where = self.symbolize(addr)
                return self._segv(addr if access == ucc.UC_MEM_FETCH else rip, where, what,
                                  addr, access)
            return GuestFault(signal.SIGSEGV, rip, where, _UNMAPPED_ERRORS.get(e.errno, str(e)),
                              code=SI_KERNEL, trapno=13)
        return EmulatorError(f"engine error at {where}: {e}")

    # -- instructions the engine would run wrongly -----------------------------------------

    def _vet_code_page(self, page: int) -> None:
        """Plant hooks over the vector VEX instructions of a code page about to be used: one
        range hook per cluster of nearby ones (:data:`VEX_HOOK_GAP`), since every hook makes
        the engine's translation of every instruction slower."""
        lo = page - vex.SWEEP_BACK
        v = self.mem.find(lo)
        if v is None or not v.prot & PROT_EXEC:
            lo = page
        hi = page + PAGE
        tail = self.mem.find(hi)
        code_end = hi + 15 if tail is not None else hi
        code = bytes(self.uc.mem_read(lo, code_end - lo))
        found = self.vex_sweeps.vector_vex_instructions(code, lo, page, hi)
        for first, last in vex.clusters(found, VEX_HOOK_GAP):
            if (first, last) not in self._vex_hooks:
                self._vex_hooks[(first, last)] = self.uc.hook_add(
                    UC_HOOK_CODE, self.guard(self._on_vex), None, first, last)

    def _on_vex(self, uc: Uc, address: int, size: int, _ud: object) -> None:
        code = self.mem.read(address, size)
        # Hooks outlive the code they were planted for (a page unmapped and mapped again):
        # only the instruction that is really there now counts.
        if vex.vector_vex_at(code + b"\0" * 4):
            raise self._unsupported(address, code, "VEX-encoded vector (AVX)")

    def _unsupported(self, address: int, code: bytes, what: str) -> UnsupportedInstruction:
        return UnsupportedInstruction(
            f"unsupported instruction at {self.symbolize(address)} ({address:#x}): {what} "
            f"instruction {code[:11].hex(' ')}; the emulator would execute it wrongly")


@functools.cache
def _old_exception_offset() -> int:
    """Where the engine's context keeps QEMU's ``old_exception``: found once per process by
    raising a #DE on a scratch engine and looking for the one int that went from -1 to 0."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0x1000, PAGE)
    uc.mem_write(0x1000, b"\x31\xc9\xf7\xf1")  # xor ecx, ecx; div ecx
    uc.hook_add(UC_HOOK_INTR, lambda u, intno, ud: u.emu_stop())
    before = bytes(uc.context_save())
    uc.emu_start(0x1000, 0x1004)
    after = bytes(uc.context_save())
    found = [off for off in range(0, len(before) - 3, 4)
             if struct.unpack_from("<i", before, off)[0] == -1
             and struct.unpack_from("<i", after, off)[0] == 0]
    if len(found) != 1:
        raise EmulatorError("cannot find the engine's exception state: guest signal handlers "
                            "for faults need Unicorn 2.1")
    return found[0]


def _base_access(access: int) -> int:
    """Fold UC_MEM_*_UNMAPPED/_PROT access kinds onto READ/WRITE/FETCH."""
    return {
        ucc.UC_MEM_READ_UNMAPPED: ucc.UC_MEM_READ, ucc.UC_MEM_READ_PROT: ucc.UC_MEM_READ,
        ucc.UC_MEM_WRITE_UNMAPPED: ucc.UC_MEM_WRITE, ucc.UC_MEM_WRITE_PROT: ucc.UC_MEM_WRITE,
        ucc.UC_MEM_FETCH_UNMAPPED: ucc.UC_MEM_FETCH, ucc.UC_MEM_FETCH_PROT: ucc.UC_MEM_FETCH,
    }.get(access, access)


