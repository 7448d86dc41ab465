"""Large mappings are reserved in bounded pieces, so a partial mprotect/munmap stays cheap."""

from __future__ import annotations

import resource

from leakdbt.machine.machine import Machine
from leakdbt.machine.memory import ENGINE_CHUNK, ENGINE_PIECES, engine_chunk


def test_engine_chunk_bounds_piece_size_and_count() -> None:
    assert engine_chunk(4096) == ENGINE_CHUNK
    assert engine_chunk(1 << 32) == ENGINE_CHUNK  # 4 GiB: 256 pieces of 16 MiB
    for size in (1 << 33, (1 << 36) + 4096, 1 << 40):
        chunk = engine_chunk(size)
        assert chunk & (chunk - 1) == 0
        assert -(-size // chunk) <= ENGINE_PIECES + 1


def test_partial_protect_of_a_4gib_mapping_touches_one_piece() -> None:
    """An mprotect of one page used to copy the whole region (8.4 GB of host memory)."""
    m = Machine()
    base = 0x1000_0000
    m.mem.map(base, 1 << 32, 3, "big")
    regions = list(m.uc.mem_regions())
    assert len(regions) <= ENGINE_PIECES + 8
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert m.mem.protect(base + 0x5000, 0x1000, 1)
    m.mem.write(base + (1 << 32) - 8, b"12345678")
    m.mem.unmap(base + 0x10000, (1 << 32) - 0x10000)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 256 * 1024  # well under the 4 GiB the old code touched
    assert m.mem.find(base + 0x5000).prot == 1  # type: ignore[union-attr]
    assert m.mem.find(base + 0x6000).prot == 3  # type: ignore[union-attr]
    assert m.mem.find(base + 0x10000) is None
    assert m.mem.read(base + 0x4000, 4) == b"\0" * 4
