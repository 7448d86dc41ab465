"""Loop regions for ``leakdbt analyze``: a secret-dependent branch that leaves a loop (an
early exit, as in ``memcmp``) needs the loop hardened as a whole, with a public ``bound``.

:func:`exit_loop` finds the outermost natural loop that a branch leaves.  The bound comes
from a run in which the secret exit is *suppressed*: :class:`LoopCounter` sends the secret
branch the way that stays in the loop every time, and counts how many times the header runs
per entry until the loop leaves by another exit.  That is the trip count when the secret
never exits early — the public maximum, for the public inputs of that run (the contract's
``check.args``).  The run is for counting only (the program then goes on as if the
comparison had succeeded).  The same run measures each inner loop's bound
(``inner_bounds``): the most iterations one entry of it ran (an entry: reaching its header
other than from one of its latches).

One run counts every loop at once, each with its secret exit suppressed
(:func:`count_loops`).  A suppressed exit can end that run early (a scan that walks off its
string faults; a result the program then finds wrong sends it down an error path), before a
loop the program reaches later is entered: each loop the run never entered is counted again
in a run of its own, with only its exit suppressed (at most :data:`RECOUNTS` such runs).

The counting is finite, whatever the loop does once its secret exit is suppressed (it may
walk past its data and never end): each loop has a *trip budget* (:func:`trip_budget`, a
multiple of how often the tainted run saw its secret branch), past which the secret exit of
that entry is let through, and the caller gives the run an instruction budget (a multiple of
the tainted run's instructions: :func:`insn_budget`), which ends it.  Neither depends on
time.  An entry that ran out of trips, or that the end of the run (the instruction budget, a
fault, ``exit``) cut short, gives no trip count; a loop with none has no bound, and
:meth:`LoopCounter.unknown` says why ("loop bound unknown"): analyze writes the region with
that reason and no ``bound``, which bounded-loop refuses until the user adds one.

A *run-time* bound needs no run (:func:`run_time_bound`): when the loop's header ends with
its other exit, a test ``cmp P, END`` of a pointer the loop steps by a constant (its one
write in the loop: ``add``/``sub``/``inc``/``dec``/``lea P, [P +/- c]``) against a
register the loop does not write, the loop runs at most ``(END - P) / step`` full
iterations from its entry, whatever the input length: analyze writes that expression
(``bound = "r8 - rdi"``), which bounded-loop evaluates when the loop is entered
(docs/passes.md).  It is public when the header's test is: the caller passes the secret
branches, and a header that branches on a secret gets none.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

from leakdbt.dbt.cfg import Block, FunctionCFG
from leakdbt.dbt.region import CodeRegion, form_region
from leakdbt.errors import LeakDBTError
from leakdbt.machine.machine import Machine
from leakdbt.x86.insn import REGS64, Insn, written_registers

Hook = Callable[[int, int], None]  # a code hook: (address, size)
MAX_TRIPS = 1 << 20  # the most iterations of one entry with the secret exit suppressed
TRIP_FLOOR = 1024  # the least trip budget of a loop
TRIP_FACTOR = 16  # trip budget: this many times the secret branch's runs in the taint run
INSN_FLOOR = 5_000_000  # the least instruction budget of a counting run
INSN_FACTOR = 8  # its budget: this many times the instructions of the tainted run
RECOUNTS = 6  # the most loops counted again alone, after the shared counting run missed them


def trip_budget(seen: int) -> int:
    """The iterations one entry of a loop may run with its secret exit suppressed, when the
    tainted run ran its secret branch ``seen`` times: one entry of the counting run may
    well run longer than the tainted run's (that is what it measures), but not without
    end."""
    return min(MAX_TRIPS, max(TRIP_FLOOR, TRIP_FACTOR * seen))


def insn_budget(seen: int) -> int:
    """The instructions a counting run may execute, when the tainted run took ``seen``."""
    return INSN_FLOOR + INSN_FACTOR * seen

# jcc condition -> whether it holds, from RFLAGS (CF 0, PF 2, ZF 6, SF 7, OF 11)
_CONDITIONS: dict[str, Callable[[int], bool]] = {
    "o": lambda f: bool(f >> 11 & 1), "b": lambda f: bool(f & 1), "e": lambda f: bool(f >> 6 & 1),
    "be": lambda f: bool(f & 1 or f >> 6 & 1), "s": lambda f: bool(f >> 7 & 1),
    "p": lambda f: bool(f >> 2 & 1), "l": lambda f: (f >> 7 & 1) != (f >> 11 & 1),
    "le": lambda f: bool(f >> 6 & 1) or (f >> 7 & 1) != (f >> 11 & 1),
}
_SYNONYMS = {"c": "b", "nae": "b", "z": "e", "na": "be", "pe": "p", "nge": "l", "ng": "le"}
_NEGATED = {"no": "o", "ae": "b", "nb": "b", "nc": "b", "ne": "e", "nz": "e", "a": "be",
            "nbe": "be", "ns": "s", "np": "p", "po": "p", "ge": "l", "nl": "l", "g": "le",
            "nle": "le"}


def is_jcc(mnemonic: str) -> bool:
    """A conditional jump on the flags (not ``jrcxz`` or ``loop``)?"""
    cc = mnemonic[1:]
    return mnemonic[:1] == "j" and (cc in _CONDITIONS or cc in _SYNONYMS or cc in _NEGATED)


def taken(mnemonic: str, rflags: int) -> bool:
    """Whether the conditional jump ``mnemonic`` (``jne``, ``jb``...) jumps under ``rflags``."""
    cc = mnemonic[1:]
    if cc in _NEGATED:
        return not _CONDITIONS[_NEGATED[cc]](rflags)
    return _CONDITIONS[_SYNONYMS.get(cc, cc)](rflags)


def exit_loop(cfg: FunctionCFG, branch: int, name: str) -> CodeRegion | None:
    """The outermost natural loop of ``cfg`` that the conditional branch at link-time
    ``branch`` can leave (one successor inside, one outside), or None: the trip count of
    every loop the branch leaves depends on it, so the region holds them all (bounded-loop
    runs its inner loops with their ``inner_bounds``)."""
    block = cfg.block_at(branch)
    if block is None or block.last.address != branch:
        return None
    best: CodeRegion | None = None
    for header in cfg.blocks:
        if not cfg.dominates(header, block.start) or not any(
                cfg.dominates(header, p) for p in cfg.blocks[header].preds):
            continue
        try:
            loop = form_region(cfg, header, name, loop=True)
        except LeakDBTError:
            continue
        inside = set(loop.blocks)
        succs = [e.target for e in block.succs]
        leaves = block.start in inside and any(s in inside for s in succs) and \
            any(s not in inside for s in succs)
        if leaves and (best is None or len(loop.blocks) > len(best.blocks)):
            best = loop
    return best


@dataclass
class _Loop:
    header: int  # runtime addresses from here on
    secret_exit: int  # the secret branch
    last: int | None = None  # the loop's last instruction run in the current entry
    count: int = 0  # header runs in the current entry
    counts: list[int] = field(default_factory=list)  # one per entry that left by another exit
    budget: int = MAX_TRIPS  # iterations of one entry with the secret exit suppressed
    ran_out: int = 0  # entries whose secret exit was let through at the budget
    cut: int = 0  # entries the end of the run cut short
    entries: int = 0  # entries of the loop in the run (reaching its header from outside)
    # inner loops, by runtime header: [the ends of their latches, trips this entry, most]
    inner: dict[int, tuple[frozenset[int], list[int]]] = field(default_factory=dict)

    def leave(self) -> None:
        if self.last is not None and self.last != self.secret_exit:
            self.counts.append(self.count)
        self.last, self.count = None, 0


class LoopCounter:
    """Counts the iterations of loops of a running guest (hooks on their code and on the
    targets of their exits only)."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.loops: dict[str, _Loop] = {}  # by the caller's name for each

    def watch(self, name: str, loop: CodeRegion, secret_exit: int, bias: int,
              budget: int = MAX_TRIPS) -> None:
        """Count ``loop`` (link-time, module loaded at ``bias``), whose secret exit is the
        branch at link-time ``secret_exit``, as ``name``; ``budget``: the iterations of one
        entry after which its secret exit is let through."""
        inside = set(loop.blocks)
        state = _Loop(loop.entry + bias, secret_exit + bias, budget=max(budget, 1))
        for h, latches in inner_loops(loop).items():
            state.inner[h + bias] = (frozenset(loop.cfg.blocks[a].last.address + bias
                                               for a in latches), [0, 0])
        self.loops[name] = state
        hooks = self.machine.hooks
        for lo, hi in loop.byte_ranges:
            hooks.on_code(self._in_loop(state), lo + bias, hi + bias)
        # a secret_exit that is no exit branch of the loop: counted as it runs (region growing)
        branch = next((b.last for b in loop.block_list() if b.last.address == secret_exit),
                      None)
        if branch is not None and branch.target is not None and is_jcc(branch.mnemonic) \
                and (branch.target in inside) != (branch.next in inside):
            stay = branch.target if branch.target in inside else branch.next
            hooks.at(state.secret_exit, self._stay(
                state, branch.mnemonic, branch.target + bias, branch.next + bias, stay + bias))
        exits = {e.target for b in loop.block_list() for e in b.succs
                 if e.target not in inside}
        for target in exits:
            hooks.at(target + bias, self._at_exit(state))

    @staticmethod
    def _in_loop(state: _Loop) -> Hook:
        def hook(address: int, size: int) -> None:
            if address == state.header:
                if state.last is None:
                    state.count = 0
                    state.entries += 1
                state.count += 1
            elif address in state.inner:
                latch_ends, counts = state.inner[address]
                counts[0] = counts[0] + 1 if state.last in latch_ends else 1
                counts[1] = max(counts)
            state.last = address
        return hook

    def _stay(self, state: _Loop, mnemonic: str, target: int, fall: int, stay: int) -> Hook:
        """At the secret branch (``mnemonic``, to ``target`` or on to ``fall``): go to
        ``stay``, the successor in the loop (RIP written in the hook: the engine goes on
        from there, not running the branch)."""
        machine = self.machine

        def hook(address: int, size: int) -> None:
            goes = target if taken(mnemonic, machine.reg("eflags")) else fall
            if goes == stay:
                return
            if state.count < state.budget:
                state.last = address
                machine.set_reg("rip", stay)
            else:
                state.ran_out += 1
        return hook

    @staticmethod
    def _at_exit(state: _Loop) -> Hook:
        def hook(address: int, size: int) -> None:
            state.leave()
        return hook

    def inner_trips(self, name: str) -> dict[int, int]:
        """The inner loops of the loop watched as ``name``: header's offset from the loop's
        header -> the most iterations one entry of it ran (0: it never ran)."""
        state = self.loops.get(name)
        if state is None:
            return {}
        return {h - state.header: counts[1] for h, (_, counts) in state.inner.items()}

    def trips(self, name: str) -> tuple[int, ...]:
        """The trip counts, per entry, of the loop watched as ``name`` with its secret exit
        suppressed (see the module docstring; none if it was not watched): the bound is the
        largest."""
        state = self.loops.get(name)
        if state is None:
            return ()
        if state.last is not None:  # the run ended inside the loop: no trip count
            state.cut += 1
            state.last, state.count = None, 0
        return tuple(state.counts)

    def entered(self, name: str) -> bool:
        """Did the run enter the loop watched as ``name``?"""
        state = self.loops.get(name)
        return state is not None and state.entries > 0

    def unknown(self, name: str, ended: str = "") -> str:
        """Why the loop watched as ``name`` has no bound (after :meth:`trips` gave none);
        ``ended``: the error that ended the run, if one did."""
        state = self.loops.get(name)
        if state is None or not state.entries:
            return "the counting run never reached it"
        why = []
        if state.ran_out:
            why.append(f"{state.ran_out} entr{'y' if state.ran_out == 1 else 'ies'} ran "
                       f"{state.budget} iterations (the trip budget) without leaving by "
                       "another exit")
        if state.cut:
            why.append(f"the counting run ended inside it ({ended})" if ended else
                       "the counting run ended inside it (its instruction budget, a fault "
                       "or an exit)")
        return "; ".join(why) or "no entry left it by another exit"


@dataclass
class Counted:
    """What the counting runs measured, by the name each loop was watched as."""

    trips: dict[str, tuple[int, ...]] = field(default_factory=dict)  # LoopCounter.trips
    inner: dict[str, dict[int, int]] = field(default_factory=dict)  # .inner_trips
    unknown: dict[str, str] = field(default_factory=dict)  # .unknown, when trips are none
    runs: int = 0  # counting runs made
    alone: list[str] = field(default_factory=list)  # loops counted again in a run of their own


Count = Callable[[Sequence[str]], tuple["LoopCounter | None", str]]


def count_loops(names: Sequence[str], count: Count, recounts: int = RECOUNTS) -> Counted:
    """Count the loops ``names``: first in one run that suppresses every one's secret exit
    (``count(names)``: the run's counter, and how the run ended, "" for an exit of its own);
    then each loop that run never entered in a run of its own, suppressing its exit alone
    (at most ``recounts`` of them).  A suppressed exit lets the program go on as if the
    secret never exited, which can end the run early (a fault, an error path): a loop the
    program reaches after such a loop is then never entered in the shared run."""
    out = Counted()

    def take(counter: LoopCounter | None, name: str, ended: str) -> bool:
        out.trips[name] = counter.trips(name) if counter is not None else ()
        out.inner[name] = counter.inner_trips(name) if counter is not None else {}
        entered = counter is not None and counter.entered(name)
        out.unknown[name] = counter.unknown(name, ended) if entered and counter else (
            "the counting run never reached it" + (f" (it ended: {ended})" if ended else ""))
        return entered

    counter, ended = count(names)
    out.runs = 1
    missed = [n for n in names if not take(counter, n, ended)]
    if len(names) < 2:
        missed = []  # it was counted alone
    for name in missed:
        if len(out.alone) >= recounts:
            out.unknown[name] = (
                "the counting run never reached it (it ended"
                + (f": {ended}" if ended else "") + "; a loop run before it, with its exit "
                "suppressed, may have changed what the program did next), and the "
                f"{recounts} runs counting such loops alone were spent")
            continue
        counter, alone_ended = count([name])
        out.runs += 1
        out.alone.append(name)
        if not take(counter, name, alone_ended):
            out.unknown[name] = ("neither the counting run nor one counting it alone "
                                 "reached it" + (f" (it ended: {alone_ended})"
                                                 if alone_ended else ""))
    return out


def inner_loops(loop: CodeRegion) -> dict[int, set[int]]:
    """The inner loops of a loop region: each header (a block other than the region's entry
    that a block of the region it dominates jumps back to) -> those latches."""
    out: dict[int, set[int]] = {}
    for b in loop.block_list():
        for e in b.succs:
            if e.target in loop.blocks and e.target != loop.entry \
                    and loop.cfg.dominates(e.target, b.start):
                out.setdefault(e.target, set()).add(b.start)
    return out


_STEP = re.compile(r"(\w+), (0x[0-9a-f]+|\d+)")
_LEA_STEP = re.compile(r"(\w+), \[(\w+) ([+-]) (0x[0-9a-f]+|\d+)\]")


def _step(insn: Insn, reg: str) -> int | None:
    """What ``insn`` adds to the 64-bit register ``reg`` when it is a constant step of it
    (``add``/``sub`` of an immediate, ``inc``/``dec``, ``lea reg, [reg +/- c]``), or None."""
    m, ops = insn.mnemonic, insn.op_str
    if m in ("inc", "dec") and ops == reg:
        return 1 if m == "inc" else -1
    step = _STEP.fullmatch(ops)
    if m in ("add", "sub") and step is not None and step.group(1) == reg:
        value = int(step.group(2), 0)
        return value if m == "add" else -value
    lea = _LEA_STEP.fullmatch(ops)
    if m == "lea" and lea is not None and lea.group(1) == reg == lea.group(2):
        value = int(lea.group(4), 0)
        return value if lea.group(3) == "+" else -value
    return None


_CONTINUES = {"e": "e", "z": "e", "ne": "ne", "nz": "ne", "s": "s", "ns": "ns"}
_NEGATE = {"e": "ne", "ne": "e", "s": "ns", "ns": "s"}


def _continues(head: Block, inside: set[int]) -> str | None:
    """The condition (``e``, ``ne``, ``s``, ``ns``) under which the block's final branch
    stays in the loop, or None (another condition, or both ways stay or leave)."""
    last = head.last
    cc = _CONTINUES.get(last.mnemonic[1:])
    if cc is None or (last.target in inside) == (last.next in inside):
        return None
    return cc if last.target in inside else _NEGATE[cc]


def run_time_bound(loop: CodeRegion, secret: Collection[int] = (), counted: bool = False
                   ) -> str | None:
    """The run-time bound of ``loop`` (module doc), as a contract writes it, or None.  Its
    test must be an exit branch that is not one of the ``secret`` branches (link-time
    addresses).  Always: the header's ``cmp`` of a register the loop steps by a power of two
    with one it does not write (``"END - P"``).  With ``counted``, also a register R the
    loop counts down by one to zero (``"R"``, ``"R - 1"``): tested by the header (``test
    R, R`` or ``cmp R, 0`` before the step, or its own step: ``sub R, 1; jns``), or by the
    step in its block, the loop's latch (``sub R, 1; jne``)."""
    head = loop.cfg.blocks[loop.entry]
    inside = set(loop.blocks)
    writes: dict[str, list[Insn]] = {}
    for b in loop.block_list():
        for insn in b.insns:
            for r in written_registers(insn):
                writes.setdefault(r, []).append(insn)
    stays = _continues(head, inside) if head.last.address not in secret else None
    test = next((i for i in reversed(head.insns[:-1]) if i.mnemonic != "nop"), None)
    ops = test.op_str.split(", ") if test is not None else []
    if stays is not None and test is not None and test.mnemonic == "cmp" and len(ops) == 2 \
            and all(REGS64.get(r) == r and r not in ("rsp", "rip") for r in ops):
        for pointer, limit in (ops, ops[::-1]):
            if limit in writes or len(writes.get(pointer, ())) != 1:
                continue
            step = _step(writes[pointer][0], pointer)
            if step is None or step == 0 or abs(step) & (abs(step) - 1):
                continue
            end, start = (limit, pointer) if step > 0 else (pointer, limit)
            return f"{end} - {start}" if abs(step) == 1 else f"({end} - {start}) / {abs(step)}"
    if not counted:
        return None
    for r, ws in writes.items():
        if len(ws) != 1 or _step(ws[0], r) != -1 or r in ("rsp", "rip"):
            continue
        stepper = ws[0]
        if stays is not None and test is not None and stays == "ne" \
                and test.mnemonic in ("test", "cmp") and ops in ([r, r], [r, "0"]) \
                and stepper not in head.insns:
            return r  # the header tests R before the step: R full iterations
        if stays is not None and test is stepper:
            return {"ns": r, "ne": f"{r} - 1"}.get(stays)
        block = loop.cfg.block_at(stepper.address)
        if block is None or block.start == loop.entry or block.last.address in secret:
            continue
        tail = [i for i in block.insns[:-1] if i.address >= stepper.address]
        cc = _continues(block, inside)
        if cc == "ne" and tail and (tail[-1] is stepper or (
                tail[-1].mnemonic in ("test", "cmp")
                and tail[-1].op_str in (f"{r}, {r}", f"{r}, 0"))):
            return r  # the latch leaves when its step reaches zero: R iterations
    return None
