"""Compact full traces read back exactly as the tuples they stored, and pickle (workers)."""

from __future__ import annotations

import pickle

from leakdbt.leakage.compact import AccessTrace, BlockTrace


def test_blocks_and_accesses_read_back_as_tuples() -> None:
    blocks = BlockTrace()
    blocks.append((0x401000, 0x401010, 0x7FFF_FFFF_E000))
    blocks.append((0xFFFF_FFFF_FFFF_FFF0, 1, 2))
    assert len(blocks) == 2 and blocks[1] == (0xFFFF_FFFF_FFFF_FFF0, 1, 2)
    assert list(blocks) == [blocks[0], blocks[1]] and blocks[-1] == blocks[1]
    accesses = AccessTrace()
    accesses.extend(-1, 0x401004, False, range(5, 7))
    accesses.extend(1, 0x401008, True, [9])
    assert list(accesses) == [(-1, 0x401004, "r", 5), (-1, 0x401004, "r", 6),
                              (1, 0x401008, "w", 9)]
    assert blocks.nbytes() == 48 and accesses.nbytes() == 3 * 25
    again = pickle.loads(pickle.dumps((blocks, accesses)))
    assert again == (blocks, accesses) and again[0] != BlockTrace()
