"""Control-flow recovery (leakdbt/dbt/cfg.py) checked against oracles outside leakdbt.

- **The compiler, through objdump.**  Programs are built by gcc (our own C file below, at -O1
  and -O2, with absolute 8-byte and PC-relative 4-byte switch tables, and the programs of
  test_binaries/) and disassembled by GNU objdump, which decodes with its own decoder and
  labels every direct branch target.  From objdump's listing alone we compute where blocks
  may start (the entry, branch targets, the instruction after any control transfer) and what
  each control transfer's successors are, and compare with the recovered CFG.
- **The source, for switch tables.**  objdump does not interpret table data, so each case of
  our switches calls (or tail-calls) its own handler ``hN``.  For every table entry we walk
  objdump's listing from the entry's target, following only straight-line code and direct
  unconditional jumps, to the first call or jump to a handler: it must be the handler the C
  source gives that case value (holes and the default go to ``hdef``).  That proves every
  entry and the table's size, in both the absolute and the relative table shapes.
- **The definition, for dominators.**  ``a`` dominates ``b`` iff ``b`` cannot be reached from
  the entry once ``a`` is removed; ``a`` post-dominates ``b`` iff no exit can be reached from
  ``b`` once ``a`` is removed.  Brute force over random graphs (hypothesis) and over the CFGs
  of the compiled functions.
"""

from __future__ import annotations

import bisect
import re
import subprocess
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from leakdbt.dbt.cfg import (
    NORETURN,
    Block,
    Edge,
    EdgeKind,
    FunctionCFG,
    JumpTable,
    function_cfg,
    recover,
)
from leakdbt.loader.elf import load_image
from leakdbt.loader.image import Image
from leakdbt.x86.insn import Flow, Insn

# Every function here exists to exercise one shape of control flow; NOIPA keeps gcc from
# inlining, cloning or merging them.  h0..h15 and hdef are the switch cases' handlers.
SOURCE = r"""
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NOIPA __attribute__((noipa))
volatile int sink;

#define H(n) NOIPA int h##n(int x) { sink = n; return x + 100 + n; }
H(0) H(1) H(2) H(3) H(4) H(5) H(6) H(7) H(8) H(9) H(10) H(11) H(12) H(13) H(14) H(15)
NOIPA int hdef(int x) { sink = -1; return x - 1; }

NOIPA int sw_dense(int k, int x) {
    switch (k) {
    case 0: return h0(x);  case 1: return h1(x);  case 2: return h2(x);
    case 3: return h3(x);  case 4: return h4(x);  case 5: return h5(x);
    case 6: return h6(x);  case 7: return h7(x);  case 8: return h8(x);
    case 9: return h9(x);  default: return hdef(x);
    }
}

NOIPA int sw_holes(unsigned k, int x) {
    int r;
    switch (k) {
    case 0: r = h0(x); break;  case 1: r = h1(x); break;  case 2: r = h2(x); break;
    case 4: r = h4(x); break;  case 5: r = h5(x); break;  case 7: r = h7(x); break;
    case 8: r = h8(x); break;  default: r = hdef(x); break;
    }
    return r * 3;
}

NOIPA int sw_offset(long k, int x) {
    switch (k) {
    case 100: x = h0(x); break;  case 101: x = h1(x); break;  case 102: x = h2(x); break;
    case 103: x = h3(x); break;  case 104: x = h4(x); break;  case 105: x = h5(x); break;
    case 106: x = h6(x); break;  case 107: x = h7(x); break;  default: x = hdef(x); break;
    }
    return x ^ 0x55;
}

NOIPA int sw_fall(int k, int x) {
    switch (k) {
    case 0: sink = 10; return h0(x);
    case 1: sink = 11; /* fall through */
    case 2: return h2(x);
    case 3: sink = 13; /* fall through */
    case 4: return h4(x + 1);
    case 5: return h5(x);
    case 6: return h6(x);
    default: return hdef(x);
    }
}

NOIPA int sw_mask(unsigned v, int x) {  /* no bounds check: every masked value has a case */
    switch ((v >> 12) & 15) {
    case 0: return h0(x);   case 1: return h1(x);   case 2: return h2(x);
    case 3: return h3(x);   case 4: return h4(x);   case 5: return h5(x);
    case 6: return h6(x);   case 7: return h7(x);   case 8: return h8(x);
    case 9: return h9(x);   case 10: return h10(x); case 11: return h11(x);
    case 12: return h12(x); case 13: return h13(x); case 14: return h14(x);
    case 15: return h15(x);
    }
    return 0;
}

NOIPA int sw_two(const unsigned char *s, int x) {  /* one table in a loop, one after it */
    for (; *s; s++) {
        switch (*s - '0') {
        case 0: x = h0(x); break;  case 1: x = h1(x); break;  case 2: x = h2(x); break;
        case 3: x = h3(x); break;  case 4: x = h4(x); break;  case 5: x = h5(x); break;
        default: x = hdef(x); break;
        }
    }
    switch (x % 9) {
    case 0: return h9(x);   case 1: return h10(x);  case 2: return h11(x);
    case 3: return h12(x);  case 4: return h13(x);  case 5: return h14(x);
    case 6: return h15(x);  default: return hdef(x);
    }
}

NOIPA int loops(const int *a, int n) {
    int s = 0;
    for (int i = 0; i < n; i++) {
        if (a[i] < 0) continue;
        if (a[i] > 1000) break;
        int j = a[i];
        while (j > 1) { j = (j & 1) ? 3 * j + 1 : j / 2; s++; }
    }
    do { s -= 7; } while (s > 100);
    return s;
}

NOIPA int nested(int a, int b, int c) {
    if (a > 0) {
        if (b > 0) {
            if (c > 0) return h1(a + b + c);
            else if (c < -5) return h2(a);
            return h3(b);
        } else if (b < -10) {
            sink = a * b;
        }
    } else if (a == 0 && (b == 1 || c == 2)) {
        return h4(c);
    }
    return h5(a - b);
}

NOIPA int early(const char *s) {
    if (!s) return -1;
    if (!*s) return 0;
    size_t n = strlen(s);
    if (n > 50) return -2;
    int sum = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '#') return sum;
        sum += s[i];
    }
    return sum;
}

NOIPA int checked(int x) {
    if (x < 0) abort();
    if (x > 1000) {
        fprintf(stderr, "too big\n");
        exit(3);
    }
    return h6(x);
}

NOIPA int cold_path(int x) {
    if (__builtin_expect(x == 12345, 0)) {
        fprintf(stderr, "unlikely %d\n", x);
        abort();
    }
    return x * 2 + h7(x);
}

NOIPA int trapper(int x) {
    if (x == 77) __builtin_trap();
    return x + 1;
}

NOIPA int recurse(int n) { return n <= 1 ? 1 : n * recurse(n - 1) + recurse(n - 2); }

NOIPA unsigned gcd(unsigned a, unsigned b) {
    while (b) { unsigned t = a % b; a = b; b = t; }
    return a;
}

NOIPA int forever(int x) {
    for (;;) {
        sink = x++;
        if (sink == 3) sink = 4;
    }
}

typedef int (*fn)(int);
NOIPA int via_pointer(fn f, int x) { return f(x + 1); }
NOIPA int call_pointer(fn f, int x) { return f(x) + f(x + 1); }

NOIPA int computed_goto(const unsigned char *ops) {
    static void *labels[] = { &&op_add, &&op_sub, &&op_end };
    int acc = 0;
    goto *labels[*ops++];
op_add: acc += 3; goto *labels[*ops++];
op_sub: acc -= 1; goto *labels[*ops++];
op_end: return acc;
}

NOIPA int selector(int a, int b) { return a < b ? b : a; }

NOIPA int logic(int a, int b, int c) { return (a && b) || (c && !a) ? h8(a) : h9(b); }

jmp_buf env;
NOIPA int jumper(int x) {
    if (x > 5) longjmp(env, x);
    return x;
}

/* Hand-written: falls_into has no return; it runs on into next_fn. */
__asm__(".text\n.globl falls_into\n.type falls_into, @function\nfalls_into:\n"
        "  addl $1, %edi\n.size falls_into, .-falls_into\n"
        ".globl next_fn\n.type next_fn, @function\nnext_fn:\n"
        "  movl %edi, %eax\n  ret\n.size next_fn, .-next_fn\n");
int falls_into(int);

/* Switch tables whose base register is set on two paths: the same table (resolved), or on
   the path decoded last something else (must stay unknown). */
#define BASE_FN(name, other)                                                              \
    __asm__(".text\n.globl " #name "\n.type " #name ", @function\n" #name ":\n"           \
            "  cmpl $1, %edi\n  je .L" #name "_b\n  leaq .L" #name "_t(%rip), %rdx\n"     \
            "  jmp .L" #name "_s\n.L" #name "_b:\n  " other "\n"                          \
            ".L" #name "_s:\n  cmpl $3, %esi\n  ja .L" #name "_d\n"                       \
            "  movslq (%rdx,%rsi,4), %rax\n  addq %rdx, %rax\n  jmp *%rax\n"              \
            ".L" #name "_d:\n  xorl %eax, %eax\n  ret\n"                                  \
            ".L" #name "_0:\n  movl $10, %eax\n  ret\n.L" #name "_1:\n  movl $11, %eax\n" \
            "  ret\n.L" #name "_2:\n  movl $12, %eax\n  ret\n.L" #name "_3:\n"            \
            "  movl $13, %eax\n  ret\n.size " #name ", .-" #name "\n"                     \
            ".section .rodata\n.balign 4\n.L" #name "_t:\n  .long .L" #name "_0-.L" #name \
            "_t, .L" #name "_1-.L" #name "_t, .L" #name "_2-.L" #name "_t, .L" #name      \
            "_3-.L" #name "_t\n.text\n")
BASE_FN(base_same, "leaq .Lbase_same_t(%rip), %rdx");
BASE_FN(base_clobbered, "movq %rdi, %rdx");

int main(int argc, char **argv) {
    static const int arr[] = {1, 7, 27, -3, 2000};
    static const unsigned char prog[] = {0, 0, 1, 2};
    int x = argc;
    if (setjmp(env)) return 9;
    x += sw_dense(argc, x) + sw_holes(argc, x) + sw_offset(argc + 99, x) + sw_fall(argc, x);
    x += sw_two((const unsigned char *)(argc > 1 ? argv[1] : "0123"), x) + sw_mask(x, argc);
    x += loops(arr, 5) + nested(x, argc, 2) + early(argv[0]) + checked(argc);
    x += cold_path(x) + trapper(argc) + recurse(argc + 3) + (int)gcd(x, 12);
    x += via_pointer(h3, x) + call_pointer(h4, x) + computed_goto(prog) + selector(x, argc);
    x += logic(x, argc, 1) + jumper(argc) + falls_into(x);
    if (argc > 10) forever(x);
    printf("%d\n", x);
    return 0;
}
"""
HANDLERS = [f"h{i}" for i in range(16)] + ["hdef"]
FUNCTIONS = [
    "sw_dense", "sw_holes", "sw_offset", "sw_fall", "sw_mask", "sw_two", "loops", "nested",
    "early", "checked", "cold_path", "trapper", "recurse", "gcd", "forever", "via_pointer",
    "call_pointer", "computed_goto", "selector", "logic", "jumper", "falls_into", "next_fn",
    "base_same", "base_clobbered", "main", *HANDLERS,
]  # fmt: skip
# Per switch: (lowest case value, {case value: handler}); other values go to hdef.
SWITCHES: dict[str, list[tuple[int, dict[int, str]]]] = {
    "sw_dense": [(0, {k: f"h{k}" for k in range(10)})],
    "sw_holes": [(0, {k: f"h{k}" for k in (0, 1, 2, 4, 5, 7, 8)})],
    "sw_offset": [(100, {100 + k: f"h{k}" for k in range(8)})],
    "sw_fall": [(0, {0: "h0", 1: "h2", 2: "h2", 3: "h4", 4: "h4", 5: "h5", 6: "h6"})],
    "sw_mask": [(0, {k: f"h{k}" for k in range(16)})],
    "sw_two": [(0, {k: f"h{k}" for k in range(6)}), (0, {k: f"h{9 + k}" for k in range(7)})],
}
# Functions the C standard and POSIX say never return (an oracle list, not cfg.NORETURN).
STANDARD_NORETURN = {"abort", "exit", "_exit", "_Exit", "quick_exit", "longjmp", "siglongjmp",
                     "__stack_chk_fail", "__assert_fail", "__libc_start_main"}
BUILDS = {  # name: gcc flags; static, so calls to abort/exit are direct (no PLT)
    "O1-abs": ["-O1", "-fno-pie", "-static"],
    "O2-abs": ["-O2", "-fno-pie", "-static"],
    "O1-rel": ["-O1", "-fPIE", "-static-pie"],
    "O2-rel": ["-O2", "-fPIE", "-static-pie"],
}


# -- objdump's view ---------------------------------------------------------------------------

@dataclass
class OInsn:
    """One line of ``objdump -d``: mnemonic without prefixes, direct target if labelled."""

    address: int
    mnemonic: str
    operands: str
    prefixes: tuple[str, ...]
    next: int = 0  # address of the next line of the listing (0: last line)
    target: int | None = None
    target_name: str | None = None

    @property
    def kind(self) -> str:
        m = self.mnemonic
        if m == "jmp":
            return "jump" if self.target is not None else "indirect-jump"
        if _CONDITIONAL.fullmatch(m):
            return "branch"
        if m == "call":
            return "call" if self.target is not None else "indirect-call"
        if m.startswith(("ret", "iret")):
            return "return"
        if m in ("hlt", "ud2"):  # int3 traps after itself: a SIGTRAP handler may go on
            return "stop"
        return "next"


_LINE = re.compile(r"^ *([0-9a-f]+):\t(.*)$")
_TARGET = re.compile(r"^([0-9a-f]+) <([^>]+)>$")
_CONDITIONAL = re.compile(r"j(?!mp$)[a-z]+|loop[a-z]*|xbegin")
_PREFIXES = {"bnd", "notrack", "rep", "repz", "repe", "repnz", "repne", "lock", "cs", "ds",
             "ss", "es", "fs", "gs", "data16", "addr32", "xacquire", "xrelease"}
_PADDING = re.compile(r"nop[a-z]*|xchg|int3")


class Listing(dict[int, OInsn]):
    """objdump's instructions by address, a sorted index of them, and (from nm) every name
    defined at an address, aliases included."""

    def __init__(self, insns: dict[int, OInsn], names: dict[int, set[str]]) -> None:
        super().__init__(insns)
        self.addresses = sorted(insns)
        self.names = names

    def within(self, bounds: Iterable[tuple[int, int]]) -> list[int]:
        """Addresses of the instructions in the [lo, hi) ranges, in order."""
        out: list[int] = []
        for lo, hi in sorted(bounds):
            out += self.addresses[bisect.bisect_left(self.addresses, lo):
                                  bisect.bisect_left(self.addresses, hi)]
        return out

    def callee_names(self, o: OInsn) -> set[str]:
        if o.target is None:
            return set()
        return {n.split("@")[0] for n in {o.target_name or "", *self.names.get(o.target, ())}}


@cache
def objdump(path: str, ranges: tuple[tuple[int, int], ...] = ()) -> Listing:
    """objdump's disassembly of ``path``: all executable sections, or only ``ranges``."""
    base = ["objdump", "-d", "-w", "--no-show-raw-insn"]
    commands = [[*base, f"--start-address={lo:#x}", f"--stop-address={hi:#x}", path]
                for lo, hi in ranges] or [[*base, path]]
    out: dict[int, OInsn] = {}
    for command in commands:
        text = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        prev: OInsn | None = None
        for line in text.splitlines():
            m = _LINE.match(line)
            if not m:
                if line.startswith("Disassembly of section") or line.strip() == "...":
                    prev = None  # a new section, or skipped zeros: the next line is no successor
                continue
            words = m.group(2).split("#")[0].split()
            i = 0
            while i < len(words) - 1 and (words[i] in _PREFIXES or words[i].startswith("rex")):
                i += 1
            o = OInsn(int(m.group(1), 16), words[i] if words else "", " ".join(words[i + 1:]),
                      tuple(words[:i]))
            t = _TARGET.match(o.operands)
            if t:
                o.target, o.target_name = int(t.group(1), 16), t.group(2)
            if prev is not None:
                prev.next = o.address
            out[o.address] = prev = o
        if prev is not None and ranges:
            del out[prev.address]  # cut at the stop address: its successor is unknown
    names: dict[int, set[str]] = {}
    nm = subprocess.run(["nm", "--defined-only", path], capture_output=True, text=True,
                        check=True).stdout
    for line in nm.splitlines():
        fields = line.split()
        if len(fields) == 3:
            names.setdefault(int(fields[0], 16), set()).add(fields[2])
    return Listing(out, names)


def compare_with_objdump(cfg: FunctionCFG, od: Listing, coverage: bool) -> list[str]:
    """Every way ``cfg`` disagrees with objdump's listing (empty: none)."""
    problems: list[str] = []
    ours = {i.address: i for b in cfg.blocks.values() for i in b.insns}
    listed = od.within(cfg.bounds)

    def lock_skip(a: int) -> bool:  # ``jmp 1f; lock; 1: cmpxchg`` enters after the prefix
        o = od.get(a - 1)
        return o is not None and "lock" in o.prefixes

    # Both decoders see the same instructions.
    for a, insn in ours.items():
        o = od.get(a)
        if o is None:
            if not lock_skip(a):
                problems.append(f"{a:#x} {insn.text}: not an instruction start for objdump")
            continue
        if o.next and cfg.contains(o.next) and o.next != insn.next:
            problems.append(f"{a:#x} {insn.text}: {insn.size} bytes, objdump says "
                            f"{o.next - a}")
    # Where blocks may start, from objdump alone (+ table targets, checked separately).
    boundaries = {cfg.entry}
    for a in listed:
        o = od[a]
        if o.kind in ("jump", "branch") and o.target is not None and cfg.contains(o.target):
            boundaries.add(o.target)
            if a in ours and o.target not in cfg.blocks:
                problems.append(f"{a:#x} {o.mnemonic}: target {o.target:#x} is no block start")
        if o.kind != "next" and o.next:
            boundaries.add(o.next)
    table_targets = {t for jt in cfg.jump_tables.values() for t in jt.targets}
    for t in table_targets - set(od):
        problems.append(f"table target {t:#x} is not an instruction start for objdump")
    for start in sorted(set(cfg.blocks) - boundaries - table_targets):
        problems.append(f"block {start:#x} starts where objdump sees no boundary")
    # Each block's way out matches its last instruction.
    for b in cfg.blocks.values():
        o = od.get(b.last.address)
        if o is None or not o.next:
            continue
        got = [(e.kind, e.target) for e in b.succs]
        expected: list[tuple[EdgeKind, int]] | None
        if o.kind == "branch":
            assert o.target is not None
            expected = [(EdgeKind.TAKEN, o.target), (EdgeKind.NOT_TAKEN, o.next)]
        elif o.kind == "jump":
            assert o.target is not None
            expected = [(EdgeKind.JUMP, o.target)]
        elif o.kind in ("call", "indirect-call"):
            callees = od.callee_names(o)
            if callees & STANDARD_NORETURN:
                expected = []
            elif not got and callees & NORETURN:
                expected = None  # glibc-internal noreturn functions: not our oracle's business
            else:
                expected = [(EdgeKind.RETURN_SITE, o.next)]
        elif o.kind in ("return", "stop"):
            expected = []
        elif o.kind == "indirect-jump":
            expected = None  # tables: checked against the source; others: unknown
            if b.last.address not in cfg.jump_tables and b.last.address not in cfg.unknown_jumps:
                problems.append(f"{b.last.address:#x}: indirect jump neither resolved nor unknown")
        else:
            expected = [(EdgeKind.FALLTHROUGH, o.next)]
        if expected is not None and got != expected:
            problems.append(f"block {b.start:#x} ending {o.mnemonic} {o.operands}: edges "
                            f"{[(k.value, hex(t)) for k, t in got]}, objdump says "
                            f"{[(k.value, hex(t)) for k, t in expected]}")
        for e in b.succs:
            if e.inside != (e.target in cfg.blocks):
                problems.append(f"edge {e}: inside flag")
    # Compiled code (no unknown jumps) has no instruction we miss but alignment padding.
    if coverage and not cfg.unknown_jumps:
        for a in listed:
            if a not in ours and not _PADDING.fullmatch(od[a].mnemonic):
                problems.append(f"{a:#x} {od[a].mnemonic} {od[a].operands}: never decoded")
    return [f"{cfg.name}: {p}" for p in problems]


# -- builds -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Image]:
    """SOURCE compiled once per entry of BUILDS (in parallel); name -> loaded image."""
    d = tmp_path_factory.mktemp("cfg")
    src = d / "cfgsrc.c"
    src.write_text(SOURCE)

    def build(name: str) -> Image:
        out = d / name
        subprocess.run(["gcc", "-g", "-Wall", "-Wno-unused", *BUILDS[name], "-o", str(out),
                        str(src)], check=True, capture_output=True)
        return load_image(out)

    with ThreadPoolExecutor(len(BUILDS)) as pool:
        return dict(zip(BUILDS, pool.map(build, BUILDS), strict=True))


def cfg_of(image: Image, name: str, general: bool = False) -> FunctionCFG:
    """The CFG as objdump's listing can judge it: callees that never return known by name
    only (``general``: also by their own CFG, which test_callees_without_a_return_path_*
    checks against objdump separately)."""
    sym = image.symbol(name)
    assert sym is not None and sym.kind == "func", name
    return function_cfg(image, sym, general=general)


@pytest.mark.parametrize("build", BUILDS)
def test_blocks_and_edges_agree_with_objdump(builds: dict[str, Image], build: str) -> None:
    image = builds[build]
    od = objdump(image.path)
    problems = [p for name in FUNCTIONS for p in compare_with_objdump(cfg_of(image, name), od,
                                                                      coverage=True)]
    assert problems == []


def case_handler(od: dict[int, OInsn], start: int, limit: int = 40) -> str | None:
    """The handler the code at ``start`` calls first, following straight-line code and
    direct jumps in objdump's listing; None if control could go elsewhere first."""
    at = start
    for _ in range(limit):
        o = od[at]
        if o.kind in ("call", "jump") and (o.target_name or "") in HANDLERS:
            return o.target_name
        if o.kind == "jump" and o.target is not None:
            at = o.target
        elif o.kind == "next":
            at = o.next
        else:
            return None
    return None


@pytest.mark.parametrize("build", BUILDS)
def test_jump_tables_send_each_case_to_its_body(builds: dict[str, Image], build: str) -> None:
    """Each table entry i leads to the handler of case ``low + i`` (hdef for a hole), and the
    table has exactly one entry per value between the lowest and the highest case."""
    image = builds[build]
    od = objdump(image.path)
    entry_size = 8 if "abs" in build else 4
    for name, specs in SWITCHES.items():
        cfg = cfg_of(image, name)
        assert cfg.unknown_jumps == (), name
        got = sorted([case_handler(od, t) for t in table.targets]
                     for table in cfg.jump_tables.values())
        expected = sorted([cases.get(low + i, "hdef") for i in range(max(cases) - low + 1)]
                          for low, cases in specs)
        assert got == expected, name
        for table in cfg.jump_tables.values():
            assert table.entry_size == entry_size
            # the entries are exactly the blocks the jmp leads to
            jmp_block = cfg.block_at(table.jump)
            assert jmp_block is not None and jmp_block.last.address == table.jump
            assert {e.target for e in jmp_block.succs} == set(table.targets)
            assert all(e.kind is EdgeKind.JUMP_TABLE and e.inside for e in jmp_block.succs)


@pytest.mark.parametrize("build", BUILDS)
def test_a_table_base_must_be_the_same_on_every_path(builds: dict[str, Image],
                                                     build: str) -> None:
    """The path that sets the base register differently is decoded after the jump was
    first resolved, so this also checks that a resolution is revisited."""
    image = builds[build]
    od = objdump(image.path)
    same = cfg_of(image, "base_same")
    [table] = same.jump_tables.values()
    assert same.unknown_jumps == () and table.entry_size == 4
    assert [od[t].operands for t in table.targets] == ["$0xa,%eax", "$0xb,%eax", "$0xc,%eax",
                                                       "$0xd,%eax"]
    clobbered = cfg_of(image, "base_clobbered")
    jumps = [a for a in od.within(clobbered.bounds) if od[a].kind == "indirect-jump"]
    assert clobbered.jump_tables == {} and list(clobbered.unknown_jumps) == jumps


@pytest.mark.parametrize("build", BUILDS)
def test_calls_that_do_not_return_end_the_path(builds: dict[str, Image], build: str) -> None:
    image = builds[build]
    od = objdump(image.path)
    for name, callees in (("checked", {"abort", "exit"}), ("cold_path", {"abort"}),
                          ("jumper", {"longjmp"})):
        cfg = cfg_of(image, name)
        seen = set()
        for b in cfg.blocks.values():
            o = od[b.last.address]
            if o.kind == "call" and od.callee_names(o) & callees:
                seen |= od.callee_names(o) & callees
                assert b.succs == [], (name, hex(b.start))
                assert cfg.postdominators[b.start] is None  # the call is an exit
        assert seen == callees, name
    cold = image.symbol("cold_path.cold")
    if cold is not None:  # -O2 moves the unlikely path out of line
        cfg = cfg_of(image, "cold_path")
        lo, hi = image.extent(cold)
        assert (lo, hi) in cfg.bounds
        assert any(lo <= b < hi for b in cfg.blocks)


@pytest.mark.parametrize("build", BUILDS)
def test_unresolvable_indirect_jumps_are_reported(builds: dict[str, Image], build: str) -> None:
    image = builds[build]
    od = objdump(image.path)
    cfg = cfg_of(image, "computed_goto")
    jumps = [b.last.address for b in cfg.blocks.values() if b.last.flow is Flow.INDIRECT_JUMP]
    assert jumps and set(cfg.unknown_jumps) == set(jumps) and cfg.jump_tables == {}
    for b in cfg.blocks.values():
        if b.last.address in cfg.unknown_jumps:
            assert b.succs == [] and cfg.postdominators[b.start] is None
    cfg = cfg_of(image, "via_pointer")  # f(x + 1): a tail call through a register at -O2
    tail = [a for a in od.within(cfg.bounds) if od[a].kind == "indirect-jump"]
    assert list(cfg.unknown_jumps) == tail
    if "O2" in build:
        assert tail


@pytest.mark.parametrize("build", BUILDS)
def test_stops_endless_loops_and_falling_off_the_end(builds: dict[str, Image],
                                                     build: str) -> None:
    image = builds[build]
    cfg = cfg_of(image, "trapper")
    stops = [b for b in cfg.blocks.values() if b.last.mnemonic == "ud2"]
    assert len(stops) == 1 and stops[0].succs == []
    assert cfg.postdominators[stops[0].start] is None
    cfg = cfg_of(image, "forever")  # no block can reach an exit
    assert cfg.postdominators == {} and cfg.exits == ()
    assert len(cfg.dominators) == len(cfg.blocks)
    cfg = cfg_of(image, "falls_into")
    next_fn = image.symbol("next_fn")
    assert next_fn is not None
    edge = Edge(EdgeKind.FALLTHROUGH, cfg.entry, next_fn.value, False)
    assert [b.succs for b in cfg.blocks.values()] == [[edge]] and cfg.exits == (edge,)


def _no_return_in_listing(od: Listing, image: Image, address: int) -> bool:
    """objdump's oracle for a callee that never returns: in its listing (its symbol's
    extent) no return, no indirect jump, no jump out of the extent, and no fall off its
    end."""
    func = next((f for f in image.functions if f.value == address), None)
    if func is None:
        return False  # not a function symbol: the CFG asks nothing of it either
    lo, hi = image.extent(func)
    listed = [a for a in od.within([(lo, hi)]) if not _PADDING.fullmatch(od[a].mnemonic)]
    last = od[listed[-1]] if listed else None
    if last is None or last.kind in ("next", "branch", "indirect-call") or (
            last.kind == "call" and not od.callee_names(last) & STANDARD_NORETURN):
        return False  # falls off its end into the code that follows
    for a in listed:
        o = od[a]
        if o.kind in ("return", "indirect-jump"):
            return False
        if o.kind in ("jump", "branch") and o.target is not None and not lo <= o.target < hi:
            return False
    return True


@pytest.mark.parametrize("kind", ["static", "static-pie"])
def test_callees_without_a_return_path_end_their_callers_paths(
        built: Path, builds: dict[str, Image], kind: str) -> None:
    """By default a call to a function whose own CFG never returns (no name of NORETURN)
    is a dead end: main's call to `forever`, ct_modexp's calls to `usage` (which exits).
    Each such callee has no return and no way out in objdump's listing; every other direct
    call keeps its return site."""
    image = builds["O1-abs" if kind == "static" else "O1-rel"]
    forever = image.symbol("forever")
    assert forever is not None
    checked = {"forever": 0}
    for img, names in ((image, FUNCTIONS + ["main"]),
                       (load_image(built / kind / "ct_modexp"), ["main"])):
        od = objdump(img.path)
        for name in names:
            general, narrow = cfg_of(img, name, general=True), cfg_of(img, name)
            for start, b in general.blocks.items():
                if b.last.flow is not Flow.CALL or b.last.target is None:
                    continue
                callee = od.callee_names(od[b.last.address]) - {""}
                by_name = bool(callee & NORETURN)
                if b.dead_end and not by_name:
                    assert _no_return_in_listing(od, img, b.last.target), (name, hex(start))
                    for n in callee:
                        checked[n] = checked.get(n, 0) + 1
                    assert start not in narrow.blocks or not narrow.blocks[start].dead_end
                elif not by_name:
                    assert not _no_return_in_listing(od, img, b.last.target), (name, hex(start))
    assert checked["forever"] >= 1 and checked.get("usage", 0) >= 1, checked


@pytest.mark.parametrize("build", BUILDS)
def test_dominators_of_compiled_functions(builds: dict[str, Image], build: str) -> None:
    image = builds[build]
    for name in FUNCTIONS:
        check_dominators(cfg_of(image, name))


# -- the programs of test_binaries -----------------------------------------------------------

CRT = {"_start", "_init", "_fini", "deregister_tm_clones", "register_tm_clones",
       "__do_global_dtors_aux", "frame_dummy"}  # start-up files, not the programs' C


@pytest.mark.parametrize("kind", ["static", "static-pie"])
def test_test_programs_agree_with_objdump(built: Path, kind: str) -> None:
    """The programs' own functions (those of the dynamic build's symbol table, which holds no
    C library) in the static builds, where calls to exit and abort are direct."""
    checked = 0
    problems: list[str] = []
    for program in sorted(p.name for p in (built / "dynamic").iterdir() if p.is_file()):
        if not (built / kind / program).exists():
            continue  # a program added since the last build
        own = {f.name for f in load_image(built / "dynamic" / program).functions} - CRT
        image = load_image(built / kind / program)
        syms = [s for s in map(image.symbol, sorted(own))
                if s is not None and s.kind == "func" and s.value]
        cfgs = [function_cfg(image, s, general=False) for s in syms]
        od = objdump(image.path, _ranges(r for cfg in cfgs for r in cfg.bounds))
        for cfg in cfgs:
            problems += compare_with_objdump(cfg, od, coverage=True)
            check_dominators(cfg)
            checked += 1
    assert problems == []
    assert checked >= 40


def _ranges(bounds: Iterable[tuple[int, int]], slack: int = 32) -> tuple[tuple[int, int], ...]:
    """[lo, hi) ranges merged, each running ``slack`` bytes on (objdump needs the next line)."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(bounds):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi + slack))
        else:
            out.append((lo, hi + slack))
    return tuple(out)


def test_static_c_library_agrees_with_objdump(built: Path) -> None:
    """A quarter of a static glibc's functions (every fourth by address: some 250 functions,
    hand-written assembly included).  Exception landing pads, computed gotos and tables
    without a bounds check are reachable only in ways static recovery cannot see, so
    coverage is not asked for here."""
    image = load_image(built / "static" / "hello")
    od = objdump(image.path)
    problems: list[str] = []
    tables = 0
    sample = image.functions[::4]
    for sym in sample:
        cfg = function_cfg(image, sym, general=False)
        problems += compare_with_objdump(cfg, od, coverage=False)
        tables += len(cfg.jump_tables)
    assert problems == []
    assert len(sample) > 200 and tables > 5


# -- dominators: brute force ------------------------------------------------------------------

def _reach(starts: Iterable[int], succs: dict[int, list[int]], removed: int | None) -> set[int]:
    seen: set[int] = set()
    work = [s for s in starts if s != removed]
    while work:
        n = work.pop()
        if n in seen:
            continue
        seen.add(n)
        work.extend(s for s in succs[n] if s != removed)
    return seen


def _closest(strict: dict[int, set[int]], candidates: set[int]) -> int | None:
    """The candidate dominated (or post-dominated) by all the others: the immediate one."""
    if not candidates:
        return None
    return max(candidates, key=lambda c: len(strict[c]))


def check_dominators(cfg: FunctionCFG) -> None:
    """cfg's dominator trees match the brute-force definitions on cfg's own graph."""
    succs = {s: b.inside_succs() for s, b in cfg.blocks.items()}
    reachable = _reach([cfg.entry], succs, None)
    assert set(cfg.dominators) == reachable == set(cfg.reachable), cfg.name
    without = {a: _reach([cfg.entry], succs, a) for a in reachable}
    strict = {b: {a for a in reachable if a != b and b not in without[a]} for b in reachable}
    for b in reachable:
        assert cfg.dominators[b] == _closest(strict, strict[b]), (cfg.name, hex(b))
    exits = {s for s, b in cfg.blocks.items() if cfg._leaves(b)}
    preds: dict[int, list[int]] = {s: [] for s in cfg.blocks}
    for s, ts in succs.items():
        for t in ts:
            preds[t].append(s)
    reaches_exit = _reach(exits, preds, None)
    assert set(cfg.postdominators) == reaches_exit, cfg.name
    pwithout = {a: _reach(exits, preds, a) for a in reaches_exit}
    pstrict = {b: {a for a in reaches_exit if a != b and b not in pwithout[a]}
               for b in reaches_exit}
    for b in reaches_exit:
        assert cfg.postdominators[b] == _closest(pstrict, pstrict[b]), (cfg.name, hex(b))


def graph_cfg(n: int, edges: dict[int, list[int]], leaving: set[int]) -> FunctionCFG:
    """A FunctionCFG whose blocks are the nodes 0..n-1 (node 0 the entry): one instruction
    each, with ``edges`` inside and an edge out of the function from the nodes in
    ``leaving`` (a node with no edge returns)."""
    addr = {v: 0x1000 + 0x10 * v for v in range(n)}
    blocks: dict[int, Block] = {}
    tables: dict[int, JumpTable] = {}
    for v in range(n):
        targets = [addr[t] for t in edges[v]]
        a = addr[v]
        if not targets:
            insn = Insn(a, b"\xc3", "ret", "", "", Flow.RETURN)
            kinds: list[EdgeKind] = []
        elif len(targets) == 1:
            insn = Insn(a, b"\xe9\0\0\0\0", "jmp", "", hex(targets[0]), Flow.JUMP, targets[0])
            kinds = [EdgeKind.JUMP]
        elif len(targets) == 2:
            insn = Insn(a, b"\x74\0", "je", "", hex(targets[0]), Flow.BRANCH, targets[0])
            kinds = [EdgeKind.TAKEN, EdgeKind.NOT_TAKEN]
        else:
            insn = Insn(a, b"\xff\xe0", "jmp", "", "rax", Flow.INDIRECT_JUMP)
            kinds = [EdgeKind.JUMP_TABLE] * len(targets)
            tables[a] = JumpTable(a, 0x9000, 8, tuple(targets))
        block = Block(a, (insn,))
        block.succs = [Edge(k, a, t, True) for k, t in zip(kinds, targets, strict=True)]
        if v in leaving and targets:
            block.succs.append(Edge(EdgeKind.JUMP_TABLE, a, 0x8000, False))
        blocks[a] = block
    for b in blocks.values():
        for t in b.inside_succs():
            if b.start not in blocks[t].preds:
                blocks[t].preds.append(b.start)
    exits = tuple(e for b in blocks.values() for e in b.succs if not e.inside)
    return FunctionCFG("graph", addr[0], ((0x1000, 0x1000 + 0x10 * n),), blocks, tables, (),
                       (), exits)


@st.composite
def graphs(draw: st.DrawFn) -> tuple[int, dict[int, list[int]], set[int]]:
    n = draw(st.integers(1, 9))
    node = st.integers(0, n - 1)
    edges = {v: draw(st.lists(node, max_size=4)) for v in range(n)}
    leaving = draw(st.sets(node))
    return n, edges, leaving


@settings(max_examples=300, deadline=None)
@given(graphs())
@example((4, {0: [1, 2], 1: [3], 2: [3], 3: []}, set()))  # diamond
@example((3, {0: [1, 2], 1: [2], 2: [1]}, {2}))  # irreducible loop, left from node 2
@example((3, {0: [1], 1: [2], 2: [1]}, set()))  # endless loop: no post-dominators at all
def test_dominators_match_the_definition(graph: tuple[int, dict[int, list[int]], set[int]]
                                         ) -> None:
    check_dominators(graph_cfg(*graph))


def test_dominators_of_small_graphs() -> None:
    """Hand-worked answers for the shapes the random test starts from."""
    a = [0x1000 + 0x10 * v for v in range(4)]
    diamond = graph_cfg(4, {0: [1, 2], 1: [3], 2: [3], 3: []}, set())
    assert diamond.dominators == {a[0]: None, a[1]: a[0], a[2]: a[0], a[3]: a[0]}
    assert diamond.postdominators == {a[0]: a[3], a[1]: a[3], a[2]: a[3], a[3]: None}
    assert diamond.dominates(a[0], a[3]) and not diamond.dominates(a[1], a[3])
    assert diamond.dominates(a[3], a[1], post=True)
    irreducible = graph_cfg(3, {0: [1, 2], 1: [2], 2: [1]}, {2})
    assert irreducible.dominators == {a[0]: None, a[1]: a[0], a[2]: a[0]}
    assert irreducible.postdominators == {a[0]: a[2], a[1]: a[2], a[2]: None}
    endless = graph_cfg(3, {0: [1], 1: [2], 2: [1]}, set())
    assert endless.postdominators == {}


def test_undecodable_code_is_reported_not_fatal() -> None:
    code = b"\x90\x90\x06\xc3"  # nop; nop; an opcode invalid in 64-bit mode; ret

    def read(address: int, size: int) -> bytes:
        return code[address - 0x1000:address - 0x1000 + size]

    cfg = recover("f", 0x1000, [(0x1000, 0x1004)], read)
    assert list(cfg.blocks) == [0x1000] and cfg.blocks[0x1000].succs == []
    assert cfg.undecodable == (0x1002,) and cfg.exits == ()
    assert cfg.dominators == {0x1000: None} and cfg.postdominators == {0x1000: None}
    at_entry = recover("g", 0x1002, [(0x1002, 0x1004)], read)
    assert at_entry.blocks == {} and at_entry.undecodable == (0x1002,)
    assert at_entry.reachable == [] and at_entry.dominators == {} == at_entry.postdominators


# -- known limits -----------------------------------------------------------------------------

def test_calls_through_the_plt_to_exit_end_the_path(tmp_path: Path) -> None:
    src = tmp_path / "plt.c"
    src.write_text("#include <stdlib.h>\n__attribute__((noipa)) int f(int x) {\n"
                   "  if (x < 0) exit(1);\n  return x * 3;\n}\n"
                   "int main(int c, char **v) { return f(c); }\n")
    out = tmp_path / "plt"
    subprocess.run(["gcc", "-O2", "-fPIE", "-pie", "-o", str(out), str(src)], check=True)
    image = load_image(out)
    cfg = cfg_of(image, "f")
    od = objdump(str(out))
    calls = [b for b in cfg.blocks.values() if od[b.last.address].target_name == "exit@plt"]
    assert calls and all(b.succs == [] for b in calls)
