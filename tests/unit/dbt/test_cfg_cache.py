"""The caches of leakdbt.dbt.cfg: ``function_cfg`` builds a function's CFG once per Image
object (and per extra leaders and ``general``) and hands the same graph out again; the
graph is the one a fresh build gives; no entry (CFG, decoded instruction, callee verdict) is
shared between two images, even two of the same file or with the same symbols; and the
decoding memo of ``recover`` is keyed by how many bytes it may read, not just the address.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from leakdbt.dbt.cfg import DecodeMemo, FunctionCFG, function_cfg, recover
from leakdbt.loader.elf import load_image
from leakdbt.loader.image import Image, Symbol


def _program(built: Path) -> Path:
    return built / "static" / "ct_modexp"  # main calls usage, which exits: a dead end


def _symbol(image: Image, name: str) -> Symbol:
    sym = image.symbol(name)
    assert sym is not None and sym.kind == "func", name
    return sym


def _same_graph(a: FunctionCFG, b: FunctionCFG) -> None:
    assert a == b  # blocks (instructions, edges both ways), tables, exits, bounds
    assert a.reachable == b.reachable
    assert a.dominators == b.dominators and a.postdominators == b.postdominators
    assert a.joins == b.joins


def test_a_cached_cfg_is_the_one_a_fresh_build_gives(built: Path) -> None:
    image = load_image(_program(built))
    for name in ("main", "usage", "modexp", "malloc"):
        for general in (True, False):
            sym = _symbol(image, name)
            first = function_cfg(image, sym, general=general)
            assert function_cfg(image, sym, general=general) is first  # from the cache
            # another Image object of the same file: built again, from nothing cached
            fresh = function_cfg(load_image(_program(built)), sym, general=general)
            assert fresh is not first
            _same_graph(fresh, first)


def test_the_key_holds_extra_leaders_and_general(built: Path) -> None:
    image = load_image(_program(built))
    main = _symbol(image, "main")
    plain = function_cfg(image, main)
    entry = plain.blocks[main.value]
    assert len(entry.insns) > 1
    inner = entry.insns[1].address  # not a block start without the extra leader
    split = function_cfg(image, main, extra_leaders=[inner])
    assert inner not in plain.blocks and inner in split.blocks
    assert function_cfg(image, main, extra_leaders=(inner, inner)) is split  # a set
    _same_graph(split, function_cfg(load_image(_program(built)), main, [inner]))
    # main's call to usage (which exits) is a dead end only when callees are judged by
    # their own CFG: the two flavours are separate entries
    usage = _symbol(image, "usage").value
    narrow = function_cfg(image, main, general=False)
    ends = [b.start for b in plain.blocks.values() if b.dead_end and b.call_target == usage]
    assert ends and not any(narrow.blocks[s].dead_end for s in ends)


def test_no_entry_is_shared_between_images(built: Path) -> None:
    """An image whose code differs from another's at the same symbols gets its own CFGs,
    decodings and callee verdicts: ``usage`` patched to return at once is no dead end."""
    image = load_image(_program(built))
    main, usage = _symbol(image, "main"), _symbol(image, "usage")
    before = function_cfg(image, main)
    calls = [b.start for b in before.blocks.values() if b.call_target == usage.value]
    assert calls and all(before.blocks[s].dead_end for s in calls)
    assert len(function_cfg(image, usage).blocks[usage.value].insns) > 1

    seg = image.segment_at(usage.value)
    assert seg is not None
    offset = seg.offset + usage.value - seg.vaddr
    patched = dataclasses.replace(image, data=image.data[:offset] + b"\xc3"  # ret
                                  + image.data[offset + 1:])
    assert patched.symbol("usage") == usage  # the same symbols, the same keys
    returns = function_cfg(patched, usage)
    assert [i.mnemonic for i in returns.blocks[usage.value].insns] == ["ret"]
    after = function_cfg(patched, main)
    assert after is not before
    assert all(not after.blocks[s].dead_end and after.blocks[s].succs for s in calls)
    # and the first image's entries are untouched
    assert function_cfg(image, main) is before
    assert len(function_cfg(image, usage).blocks[usage.value].insns) > 1


def test_the_decoding_memo_is_keyed_by_the_bytes_it_may_read() -> None:
    """The same address decodes differently when the function ends inside the
    instruction: a memo shared by the two builds must not hand one's answer to the
    other."""
    code = b"\x90\xb8\x01\x00\x00\x00\xc3"  # nop; mov eax, 1; ret

    def read(address: int, size: int) -> bytes:
        return code[address - 0x1000:address - 0x1000 + size]

    memo: DecodeMemo = {}
    whole = recover("f", 0x1000, [(0x1000, 0x1007)], read, decoded=memo)
    cut = recover("f", 0x1000, [(0x1000, 0x1003)], read, decoded=memo)  # ends in the mov
    assert [i.mnemonic for i in whole.blocks[0x1000].insns] == ["nop", "mov", "ret"]
    assert cut.undecodable == (0x1001,) and [i.mnemonic for i in cut.blocks[0x1000].insns] \
        == ["nop"]
    assert memo  # the builds went through it
    again = recover("f", 0x1000, [(0x1000, 0x1007)], read, decoded=memo)
    assert again == whole == recover("f", 0x1000, [(0x1000, 0x1007)], read)
