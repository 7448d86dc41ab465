"""Counted loops of ordinary gcc -O2 code around predicated calls (plugins/support/arm_loop.py,
plugins/support/clone.py ``loops=True``), two shapes the loop and memory rules used to refuse:

- a counter in a callee-saved register (``rbx``) while the loop calls a function that saves
  and restores it (``push rbx`` ... ``pop rbx``): the pop provably gives the counter back,
  so it is not a write of it (:func:`plugins.support.clone._preserved`);
- a clone's access indexed by a counted loop's counter (or a copy of it): a local array of
  the callee's frame (``[rsp + rdx*8 - 0x48]``, or through ``mov rsi, rsp``), a module-data
  table reached through ``lea rsi, [rip + X]`` (``[rsi + rdx*8]``; non-PIE code:
  ``[rdx*8 + X]``); it runs guarded (``Guard`` target ``loop``): when its block is off, the
  index (and a base register) are set to the values the iteration has when it is on.

Differential runs in raw Unicorn (tests/unit/dbt/harness.py) against the original, static,
static-pie and static with ``-fno-pie`` code; the copy's instructions and cache lines are
the same for both values of the secret bit; each refusal's message; the cost of one entry.
"""

from __future__ import annotations

import dataclasses

import pytest

from leakdbt.dbt.cfg import function_cfg
from leakdbt.loader.elf import load_image
from leakdbt.loader.image import Image
from leakdbt.plugin_api import DataObject, Refusal, RegionView, Rewrite
from plugins.if_conversion import PASS
from tests.unit.dbt.harness import compile_program
from tests.unit.plugins.ifc_support import (
    CFLAGS,
    build,
    check_entry_cost,
    check_path_hidden,
    check_secret_bit,
    clone_check,
    harden,
    view_from_asm,
)

STATES = 300

SOURCE = r"""
unsigned long tab[8] = {3, 5, 7, 11, 13, 17, 19, 23};

__attribute__((noipa)) unsigned long leaf(unsigned long x)
{
    return (x ^ (x >> 13)) * 0x2545F4914F6CDD1DUL;
}

/* push rbp; push rbx; ... mov rbx, rdi ... pop rbx; pop rbp (keeps x and a across calls) */
__attribute__((noipa)) unsigned long work(unsigned long x)
{
    unsigned long a = leaf(x);
    return leaf(a + x) ^ a;
}

/* push rbx; ... rbx written ...; pop rbx (a leaf that clobbers a callee-saved register) */
__attribute__((noipa)) unsigned long churn(unsigned long x)
{
    unsigned long y = x * 3;
    __asm__ volatile("mov %1, %%rbx; add %%rbx, %0" : "+r"(y) : "r"(x) : "rbx");
    return y;
}

/* the arm's counter lives in rbx (it must survive the call); work saves and restores rbx */
__attribute__((noipa)) unsigned long saver(unsigned long s, unsigned long x)
{
    unsigned long r = x;
    if (s & 1) {
#pragma GCC unroll 1
        for (int i = 0; i < 4; i++)
            r = work(r) + i;
    }
    return r ^ s;
}

/* a callee's own loop with its counter in rbx, calling churn, which saves rbx */
__attribute__((noipa)) unsigned long looped(unsigned long x)
{
#pragma GCC unroll 1
    for (int i = 0; i < 5; i++)
        x = churn(x) ^ i;
    return x;
}

__attribute__((noipa)) unsigned long nested_saver(unsigned long s, unsigned long x)
{
    unsigned long r = x + 2;
    if (s & 2)
        r = looped(x) + 1;
    return r - s;
}

/* a local array of the callee's frame read by the counter: [rsp + rdx*8 - 0x48] */
__attribute__((noipa)) unsigned long local_arr(unsigned long x)
{
    unsigned long a[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++)
        a[i] = x ^ (x >> (i + 1));
    unsigned long r = x;
#pragma GCC unroll 1
    for (int i = 0; i < 8; i++)
        r = (r * 0x9E3779B97F4A7C15UL) ^ a[i] ^ (unsigned long)i;
    return r;
}

__attribute__((noipa)) unsigned long with_local(unsigned long s, unsigned long x)
{
    unsigned long r = x;
    if (s & 4)
        r = local_arr(x) + 1;
    return r ^ s;
}

/* a module-data table read by the counter: lea rsi, [rip + tab] ... [rsi + rdx*8] */
__attribute__((noipa)) unsigned long table_sum(unsigned long x)
{
    unsigned long r = x;
#pragma GCC unroll 1
    for (int i = 0; i < 8; i++)
        r = (r ^ tab[i]) * 0xff51afd7ed558ccdUL + i;
    return r;
}

__attribute__((noipa)) unsigned long with_table(unsigned long s, unsigned long x)
{
    unsigned long r = x;
    if (s & 8)
        r = table_sum(x) * 3;
    return r + s;
}

__attribute__((noipa)) unsigned long pair(unsigned long x, unsigned long y)
{
    return (x ^ (y >> 5)) * 0x100000001B3UL;
}

/* a local array stored and read by the counter through a frame pointer the callee sets
   before the loop: lea rsi, [rsp - 0x48] ... mov [rsi + rax*8], rdx; mov r8, [rsi + rax*8] */
__attribute__((noipa)) unsigned long stored(unsigned long x)
{
    unsigned long a[8];
    unsigned long r = 0;
#pragma GCC unroll 1
    for (int i = 0; i < 8; i++) {
        a[i] = x * (unsigned long)(i + 3);
        __asm__("" ::: "memory");
        r ^= a[i] + i;
    }
    return pair(r + a[3], a[5]) + 1;  /* rsi, the frame pointer, is overwritten: a
                                         clone's stack addresses differ from the original's */
}

__attribute__((noipa)) unsigned long with_stored(unsigned long s, unsigned long x)
{
    unsigned long r = x ^ 9;
    if (s & 16)
        r = stored(x) - 5;
    return r * s;
}

/* an index copied from the counter inside the loop (mov rcx, rdx; movsxd rsi, edx), into
   a red-zone array, stored and read back (written in assembly: gcc keeps one register) */
__attribute__((naked)) unsigned long copied(unsigned long x)
{
    __asm__(".intel_syntax noprefix\n"
            "mov rax, rdi\n"
            "xor edx, edx\n"
            "1: mov rcx, rdx\n"
            "mov qword ptr [rsp + rcx*8 - 0x40], rax\n"
            "movsxd rsi, edx\n"
            "xor rax, qword ptr [rsp + rsi*8 - 0x40]\n"
            "imul rax, rax, 0x1234567\n"
            "add rax, rdx\n"
            "add edx, 1\n"
            "cmp edx, 8\n"
            "jne 1b\n"
            "ret\n"
            ".att_syntax\n");
}

__attribute__((noipa)) unsigned long with_copied(unsigned long s, unsigned long x)
{
    unsigned long r = x;
    if (s & 32)
        r = copied(x) + 7;
    return r ^ s;
}

int main(int argc, char **argv)
{
    (void)argv;
    unsigned long a = (unsigned long)argc;
    return (int)(saver(a, a) + nested_saver(a, a) + with_local(a, a) + with_table(a, a)
                 + with_stored(a, a) + with_copied(a, a));
}
"""
FUNCTIONS = {"saver": 1, "nested_saver": 2, "with_local": 4, "with_table": 8,
             "with_stored": 16, "with_copied": 32}


@pytest.fixture(scope="module", params=["static", "static-pie", "static-fno-pie"])
def program(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Image:
    """static-fno-pie: non-PIE code, whose table loads are ``[rdx*8 + X]`` (no base)."""
    directory = tmp_path_factory.mktemp(f"clone-frames-{request.param}")
    if request.param == "static-fno-pie":
        path = compile_program(directory, "clone_frames", {"clone_frames.c": SOURCE}, "static",
                               (*CFLAGS, "-fno-pie"))
        return load_image(str(path))
    return build(directory, "clone_frames", SOURCE, request.param)


def test_the_shapes_are_what_gcc_makes(program: Image) -> None:
    """The callees really save the counter's register, and the accesses are indexed."""
    def text(function: str) -> list[str]:
        sym = program.symbol(function)
        assert sym is not None
        cfg = function_cfg(program, sym)
        return [f"{i.mnemonic} {i.op_str}" for b in cfg.blocks.values() for i in b.insns]

    for callee in ("work", "churn"):
        assert "push rbx" in text(callee) and "pop rbx" in text(callee), text(callee)
    assert any(line.startswith("add rbx, 1") or line.startswith("add ebx, 1")
               for line in text("saver")), text("saver")
    assert any(line.startswith("add rbx, 1") or line.startswith("add ebx, 1")
               for line in text("looped")), text("looped")
    assert any("[rsp + rdx*8 - 0x48]" in line for line in text("local_arr")), \
        text("local_arr")
    table = "[rdx*8 + 0x" if "fno-pie" in program.path else "[rsi + rdx*8]"
    assert any(table in line for line in text("table_sum")), text("table_sum")
    assert any(line.startswith("mov qword ptr [") and "rax*8" in line
               for line in text("stored")), text("stored")


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_the_new_shapes_compute_what_the_original_computes(program: Image,
                                                           function: str) -> None:
    check, rewrite = clone_check(program, function)
    code = rewrite.code or ()
    assert not any(line.startswith("call") for line in code)
    bit = FUNCTIONS[function]
    check_secret_bit(check, "clone-frames", function, bit, STATES)


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_both_paths_run_the_same_instructions_and_lines(program: Image, function: str) -> None:
    check, _ = clone_check(program, function)
    bit = FUNCTIONS[function]
    for seed in range(3):  # other registers (the counter's old value among them) random
        check_path_hidden(check, f"clone-frames-leak:{function}:{seed}", bit)


def test_cost_of_one_entry(program: Image, capsys: pytest.CaptureFixture[str]) -> None:
    """Instructions of one entry, original (both paths) and hardened; printed for the
    record (run with ``-s``).  The hardened count is the same for both paths."""
    for function, bit in sorted(FUNCTIONS.items()):
        check, _ = clone_check(program, function)
        check_entry_cost(check, f"clone-frames-cost:{function}", bit,
                         f"{program.path.split('/')[-2]} {function}", capsys)


# -- refusals and the rules behind them ----------------------------------------------------

CALLEE = 0x20000
ARM = ["test dil, 1", "je join"]
SAVER_LOOP = [*ARM, "mov ebx, 4", "top:", f"call {CALLEE:#x}", "sub ebx, 1", "jne top",
              "join:", "ret"]
NOT_COUNTED = "the loop's head; it is not a counted loop"


def _harden(lines: list[str], callee: list[str], view: RegionView | None = None
            ) -> Rewrite | Refusal:
    return harden(PASS, view or view_from_asm(lines, callees={CALLEE: callee}))


SAVES = {  # callee -> accepted (the counter rbx comes back) or not
    "push-pop": (["push rbx", "mov ebx, 1", "add rax, rbx", "pop rbx", "ret"], True),
    "two-pushes": (["push rbp", "push rbx", "mov ebx, 1", "mov ebp, 2", "pop rbx", "pop rbp",
                    "ret"], True),
    "frame-below": (["push rbx", "sub rsp, 0x10", "mov ebx, 1", "mov qword ptr [rsp], rbx",
                     "mov qword ptr [rsp + 8], rax", "add rsp, 0x10", "pop rbx", "ret"], True),
    "branchy": (["push rbx", "test eax, eax", "je done", "mov ebx, 1", "done:", "pop rbx",
                 "ret"], True),
    "store-to-slot": (["push rbx", "mov ebx, 1", "mov qword ptr [rsp], rax", "pop rbx", "ret"],
                      False),
    "unaligned-store": (["push rbx", "mov ebx, 1", "mov dword ptr [rsp + 4], eax", "pop rbx",
                         "ret"], False),
    "swapped-pops": (["push rbx", "push rax", "mov ebx, 1", "pop rbx", "pop rax", "ret"],
                     False),
    "written-before-push": (["mov ebx, 1", "push rbx", "pop rbx", "ret"], False),
    "one-path-no-pop": (["push rbx", "mov ebx, 1", "test eax, eax", "je out", "pop rbx", "ret",
                         "out:", "pop rax", "ret"], False),
    "slot-left": (["push rbx", "mov ebx, 1", "add rsp, 8", "sub rsp, 8", "pop rbx", "ret"],
                  False),
    "store-through-register": (["push rbx", "mov ebx, 1", "lea rcx, [rsp]",
                                "mov qword ptr [rcx], rax", "pop rbx", "ret"], False),
}


@pytest.mark.parametrize("case", sorted(SAVES))
def test_a_push_pop_pair_is_not_a_write_only_when_it_provably_restores(case: str) -> None:
    callee, accepted = SAVES[case]
    result = _harden(SAVER_LOOP, callee)
    if accepted:
        assert isinstance(result, Rewrite), result
    else:
        assert isinstance(result, Refusal), result
        assert NOT_COUNTED in result.reason or "neither the clone's own stack" in \
            result.reason, result.reason


def test_store_through_a_register_is_refused_by_the_memory_rule_first() -> None:
    result = _harden(SAVER_LOOP, SAVES["store-through-register"][0])
    assert isinstance(result, Refusal)
    assert "its address is neither the clone's own stack nor module data" in result.reason


def test_a_nested_callee_that_restores_the_counter() -> None:
    """The callee calls a function that saves rbx; the outer one does not touch it."""
    view = view_from_asm(SAVER_LOOP, callees={
        CALLEE: ["add rax, 1", "call 0x30000", "ret"],
        0x30000: ["push rbx", "mov rbx, rax", "imul rax, rbx", "pop rbx", "ret"]})
    assert isinstance(harden(PASS, view), Rewrite)
    bad = view_from_asm(SAVER_LOOP, callees={
        CALLEE: ["add rax, 1", "call 0x30000", "mov ebx, 2", "ret"],
        0x30000: ["push rbx", "mov rbx, rax", "pop rbx", "ret"]})
    result = harden(PASS, bad)
    assert isinstance(result, Refusal) and NOT_COUNTED in result.reason, result


RULE = ("its address is neither the clone's own stack nor module data, so it may fault "
        "when the predicate is off")
COUNTED = ["xor ecx, ecx", "top:", "{access}", "add rcx, 1", "cmp rcx, 8", "jne top", "ret"]
ACCESS_REFUSALS = {  # callee lines -> the end of the refusal
    "no-loop": (["mov rax, qword ptr [rsp + rdx*8 - 0x40]", "ret"],
                f"{RULE}, and its index rdx is not the counter of a counted loop around it "
                "(one that nothing in the loop but its step writes)"),
    "other-index": ([line.format(access="mov rax, qword ptr [rsp + rdx*8 - 0x40]")
                     for line in COUNTED],
                    f"{RULE}, and its index rdx is not the counter of a counted loop"),
    "computed-index": (["xor ecx, ecx", "top:", "lea rdx, [rcx + 1]",
                        "mov rax, qword ptr [rsp + rdx*8 - 0x40]", "add rcx, 1", "cmp rcx, 8",
                        "jne top", "ret"],
                       f"{RULE}, and its index rdx is not the counter of a counted loop"),
    "above-frame": ([line.format(access="mov rax, qword ptr [rsp + rcx*8 - 0x10]")
                     for line in COUNTED],
                    f"{RULE}, and with its index from 0 to 7 (the loop's counter) it reaches "
                    "[rsp - 0x10] .. [rsp + 0x30], outside the clone's frame (its red zone up "
                    "to its return address)"),
    "below-red-zone": ([line.format(access="mov rax, qword ptr [rsp + rcx*8 - 0x98]")
                        for line in COUNTED],
                       "it reaches [rsp - 0x98] .. [rsp - 0x58], outside the clone's frame"),
    "base-not-data": ([line.format(access="mov rax, qword ptr [rsi + rcx*8]")
                       for line in COUNTED],
                      f"{RULE}, and its base rsi is not set to module data (`lea rsi, [rip + "
                      "X]`) or to the clone's stack (`lea rsi, [rsp + d]`) on the one path into "
                      "the loop"),
    "frame-pointer-outside": (["lea rsi, [rsp - 0x20]", *[line.format(
        access="mov rax, qword ptr [rsi + rcx*8]") for line in COUNTED]],
                              f"{RULE}, and with its index from 0 to 7 (the loop's counter) it "
                              "reaches [rsp - 0x20] .. [rsp + 0x20], outside the clone's frame"),
    "base-written": (["lea rsi, [rip + 0x1000]", "xor ecx, ecx", "top:",
                      "mov rax, qword ptr [rsi + rcx*8]", "add rsi, 8", "add rcx, 1",
                      "cmp rcx, 8", "jne top", "ret"],
                     f"{RULE}, and its base rsi is written in the loop"),
    "absolute-no-object": ([line.format(access="mov rax, qword ptr [rcx*8 + 0x4000]")
                            for line in COUNTED],
                           f"{RULE}, and with its index from 0 to 7 (the loop's counter) it "
                           "reaches 0x4000 .. 0x4040, not inside one data object of the module"),
    "no-object": (["lea rsi, [rip + 0x1000]", *[line.format(
        access="mov rax, qword ptr [rsi + rcx*8]") for line in COUNTED]],
                  f"{RULE}, and with its index from 0 to 7 (the loop's counter) it reaches "
                  "0x21007 .. 0x21047, not inside one data object of the module"),
}


@pytest.mark.parametrize("case", sorted(ACCESS_REFUSALS))
def test_indexed_accesses_that_no_counted_loop_bounds_are_refused(case: str) -> None:
    callee, message = ACCESS_REFUSALS[case]
    result = _harden([*ARM, f"call {CALLEE:#x}", "join:", "ret"], callee)
    assert isinstance(result, Refusal), result
    assert result.reason.endswith(message) or message in result.reason, result.reason


def _with_object(view: RegionView, obj: DataObject) -> RegionView:
    return dataclasses.replace(view, object_at=lambda a: obj if
                               obj.address <= a < obj.address + obj.size else None)


def test_a_table_access_must_lie_inside_one_object() -> None:
    callee = ["lea rsi, [rip + 0x1000]", *[line.format(
        access="mov rax, qword ptr [rsi + rcx*8]") for line in COUNTED]]
    view = view_from_asm([*ARM, f"call {CALLEE:#x}", "join:", "ret"], callees={CALLEE: callee})
    whole = _harden([], [], _with_object(view, DataObject("t", 0x21007, 0x40)))
    assert isinstance(whole, Rewrite), whole
    short = _harden([], [], _with_object(view, DataObject("t", 0x21007, 0x38)))
    assert isinstance(short, Refusal), short
    assert short.reason.endswith("it reaches 0x21007 .. 0x21047, not inside one data object "
                                 "of the module"), short.reason


def test_an_absolute_table_needs_its_module_at_its_link_time_address() -> None:
    callee = [line.format(access="mov rax, qword ptr [rcx*8 + 0x4000]") for line in COUNTED]
    view = _with_object(view_from_asm([*ARM, f"call {CALLEE:#x}", "join:", "ret"],
                                      callees={CALLEE: callee}), DataObject("t", 0x4000, 0x40))
    assert isinstance(_harden([], [], view), Rewrite)
    moved = _harden([], [], dataclasses.replace(view, bias=0x1000))
    assert isinstance(moved, Refusal), moved
    assert moved.reason.endswith(f"{RULE}, and it has no base register while its module is not "
                                 "loaded at its link-time address"), moved.reason


def test_a_local_array_in_the_frame_is_accepted() -> None:
    """Indexed by the counter, through a frame pointer, by a copy of the counter."""
    for callee in (
            ["xor ecx, ecx", "top:", "mov edx, ecx", "add rcx, 1",
             "mov rax, qword ptr [rsp + rdx*8 - 0x40]", "cmp rcx, 8", "jne top", "ret"],
            [line.format(access="mov rax, qword ptr [rsp + rcx*8 - 0x40]") for line in COUNTED],
            ["lea rsi, [rsp - 0x40]", *[line.format(access="mov qword ptr [rsi + rcx*8], rax")
                                        for line in COUNTED]]):
        result = _harden([*ARM, f"call {CALLEE:#x}", "join:", "ret"], callee)
        assert isinstance(result, Rewrite), result
