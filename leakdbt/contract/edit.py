"""Adding ``[[protect.region]]`` entries to a contract's text, keeping everything the user
wrote — comments, order, formatting — as it is.

The new entries go right after the ``[protect]`` section (its table and the regions already
in it), before the comments that introduce the next section; a contract whose protect
section comes last gets them at the end.  An entry whose ``at`` and ``kind`` the contract
already has is not added again, so writing the same findings twice changes nothing.
"""

from __future__ import annotations

import textwrap
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass

from leakdbt.contract.dump import region_lines
from leakdbt.contract.toml_lines import key_lines
from leakdbt.errors import ContractError


@dataclass(frozen=True)
class RegionEntry:
    """One ``[[protect.region]]`` to add."""

    at: str  # a location as contracts write it: ``modexp+0x20``, ``libc.so.6:memcmp``
    kind: str  # branch, table, divide, loop, float, function
    why: str = ""
    table: str | None = None  # kind = "table": the table's symbol (or link-time address)
    length: int | None = None  # kind = "table": its length when not the symbol's size
    bound: int | str | None = None  # kind = "loop": the public maximum trip count
    inner_bounds: tuple[tuple[str, int], ...] = ()  # kind = "loop": (inner header, bound)
    public: tuple[str, ...] = ()  # kind = "branch": registers public at its entry
    comment: str = ""  # ``#`` lines above the table (analyze: why no pass accepts it)

    def toml(self) -> str:
        notes = [f"# {line}" for line in textwrap.wrap(self.comment, 92)]
        return "\n".join(notes + region_lines(
            self.at, self.kind, symbol=self.table or None, length=self.length,
            bound=self.bound, why=self.why,
            inner_bounds=self.inner_bounds, public=self.public)) + "\n"


def add_regions(text: str, entries: Sequence[RegionEntry], path: str = "<contract>"
                ) -> tuple[str, list[RegionEntry]]:
    """``text`` with ``entries`` added (see the module doc), and the entries really added."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ContractError(path, [(1, "toml", f"not valid TOML: {e}")]) from None
    if not isinstance(data.get("protect"), dict):
        raise ContractError(path, [(1, "protect", "missing: regions are added to [protect]")])
    have = {(r.get("at"), r.get("kind")) for r in data["protect"].get("region", [])
            if isinstance(r, dict)}
    new = [e for e in dict.fromkeys(entries) if (e.at, e.kind) not in have]
    if not new:
        return text, []
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    at = _insertion_line(text, len(lines))
    before = "".join(lines[:at]).rstrip("\n")
    after = "".join(lines[at:]).lstrip("\n")
    block = "\n".join(e.toml() for e in new)
    return before + "\n\n" + block + ("\n" + after if after else ""), new


def _insertion_line(text: str, count: int) -> int:
    """The index of the line before which new regions go (``count``: at the end)."""
    keys = key_lines(text)
    protect_end = max(line for key, line in keys.items() if key and key[0] == "protect")
    later = [line for key, line in keys.items()
             if key and key[0] != "protect" and line > protect_end]
    if not later:
        return count
    index = min(later) - 1  # 0-based index of the next section's header
    lines = text.splitlines()
    # Comments and blank lines right above the header belong to the next section.
    while index > 0 and (not lines[index - 1].strip()
                         or lines[index - 1].lstrip().startswith("#")):
        index -= 1
    return index
