"""analyze on nested loops (test_binaries/nested_loop): a secret exit that leaves both
loops gets the outer loop, one that leaves only the inner loop gets the inner loop, and the
counting run measures the inner loop's bound per entry."""

from __future__ import annotations

import os
from pathlib import Path

from leakdbt.analysis.loops import LoopCounter, exit_loop, inner_loops
from leakdbt.dbt.cfg import FunctionCFG, function_cfg
from leakdbt.dbt.dispatch import Dispatcher
from leakdbt.loader.elf import load_image
from leakdbt.machine.machine import Machine
from leakdbt.run.session import ExecOptions, execute
from tests.conftest import binary

# same_limbs+0x19: jne to the `return 0` (leaves both loops); leading_zeros+0x24: jne past
# the zero scan (leaves the inner loop only).  gcc 12 offsets, as contracts/nested_loop.toml.
KEY = "00000000c0ffee00" + "0000000000000042" + "0" * 16 + "000deadbeef00000"


def _cfg(function: str) -> tuple[FunctionCFG, int]:
    image = load_image(binary("static", "nested_loop"))
    sym = image.symbol(function)
    assert sym is not None
    return function_cfg(image, sym), sym.value


def test_the_outermost_loop_a_branch_leaves(built: Path) -> None:
    cfg, same = _cfg("same_limbs")
    loop = exit_loop(cfg, same + 0x19, "same_limbs")
    assert loop is not None and loop.entry == same + 0x7
    assert {h - same: {a - same for a in ls} for h, ls in inner_loops(loop).items()} == \
        {0x10: {0x1b}}
    cfg, lz = _cfg("leading_zeros")
    inner = exit_loop(cfg, lz + 0x24, "leading_zeros")
    assert inner is not None and inner.entry == lz + 0x20 and inner_loops(inner) == {}


def test_the_counting_run_measures_the_inner_bound(built: Path) -> None:
    """With the secret exit suppressed, every limb's compare runs 16 digits: bound 4 (the
    limbs), inner bound 16, whatever the key."""
    exe = binary("static", "nested_loop")
    cfg, same = _cfg("same_limbs")
    loop = exit_loop(cfg, same + 0x19, "same_limbs")
    assert loop is not None
    box: dict[str, LoopCounter] = {}

    def on_start(machine: Machine, _d: Dispatcher | None) -> None:
        box["counter"] = counter = LoopCounter(machine)
        counter.watch("same_limbs+0x7", loop, same + 0x19, 0)

    for key in (KEY, "f" * 64):
        with open(os.devnull, "w") as null:
            execute(exe, ExecOptions(argv=[exe, key], env=[], on_start=on_start,
                                     stdio=(0, null.fileno(), null.fileno())))
        counter = box.pop("counter")
        assert counter.trips("same_limbs+0x7") == (4,), key
        assert counter.inner_trips("same_limbs+0x7") == {0x9: 16}, key
        assert counter.inner_trips("elsewhere") == {}
