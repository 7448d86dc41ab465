"""What the loader sees in an ELF file, for ``leakdbt info``: a dict and a stable text report.

Both are built only from the :class:`~leakdbt.loader.image.Image`, so they show exactly what a
run would use.  Addresses are link-time (PIE and shared objects start near 0).
"""

from __future__ import annotations

import json
import struct
from typing import Any

from leakdbt.errors import ElfError
from leakdbt.loader.elf import section_headers
from leakdbt.loader.image import ElfKind, Image

# The note ``leakdbt harden`` writes into a hardened file: one ELF note (owner "leakdbt",
# type 1) whose descriptor is JSON: the contract's hash, the CPU profile, the mode, the
# passes per region and leakdbt's version.
HARDENING_NOTE = ".note.leakdbt"
NOTE_OWNER = b"leakdbt\0"
NOTE_TYPE = 1
_NOTE_HEADER = struct.Struct("<III")


def note_bytes(record: dict[str, Any]) -> bytes:
    """The hardening note holding ``record`` (keys sorted: the same record, the same bytes)."""
    desc = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
    desc += bytes(-len(desc) % 4)
    return _NOTE_HEADER.pack(len(NOTE_OWNER), len(desc), NOTE_TYPE) + NOTE_OWNER + desc


def hardening_note(image: Image) -> dict[str, Any] | None:
    """What the hardening note of ``image``'s file records, or None (not hardened)."""
    try:
        sections = section_headers(image.path, image.data)
    except ElfError:  # no file bytes to read sections from
        return None
    for s in sections:
        if s.name != HARDENING_NOTE:
            continue
        raw = image.data[s.offset:s.offset + s.size]
        if len(raw) < _NOTE_HEADER.size:
            return {"error": "truncated note"}
        namesz, descsz, _type = _NOTE_HEADER.unpack_from(raw)
        start = _NOTE_HEADER.size + (namesz + 3) // 4 * 4
        try:
            record = json.loads(raw[start:start + descsz].rstrip(b"\0"))
        except ValueError:
            return {"error": "the note is not JSON"}
        return record if isinstance(record, dict) else {"error": "the note is not an object"}
    return None


def describe(image: Image) -> dict[str, Any]:
    """The image as a JSON-serialisable dict (numbers as ints, absent values as None)."""
    return {
        "path": image.path,
        "kind": image.kind.value,
        "pie": image.is_pie,
        "entry": image.entry,
        "entry_symbol": _entry_symbol(image),
        "segments": [
            {
                "vaddr": s.vaddr,
                "memsz": s.memsz,
                "filesz": s.filesz,
                "offset": s.offset,
                "align": s.align,
                "perms": s.perms,
            }
            for s in image.segments
        ],
        "image_size": image.high - image.low,
        "interpreter": image.interpreter,
        "needed": list(image.needed),
        "soname": image.soname,
        "has_symtab": image.has_symtab,
        "has_dwarf_lines": image.has_dwarf_lines,
        "symbol_count": len(image.symbols),
        "function_count": len(image.functions),
        "warnings": list(image.warnings),
        "hardened": hardening_note(image),
    }


def format_info(image: Image) -> str:
    """A human-readable report of :func:`describe`, one fact per line, in a fixed order."""
    d = describe(image)
    entry = f"{d['entry']:#x}"
    if d["entry_symbol"]:
        entry += f" ({d['entry_symbol']})"
    pie = "yes (ET_DYN, placed at a load bias)" if d["pie"] else "no (ET_EXEC, fixed addresses)"
    symtab = "yes" if d["has_symtab"] else "no (stripped)"
    rows = [
        ("path", d["path"]),
        ("kind", d["kind"]),
        ("pie", pie),
        ("entry", entry),
        ("interpreter", d["interpreter"] or "none"),
        ("needed", ", ".join(d["needed"]) or "none"),
        ("soname", d["soname"] or "none"),
        ("symtab", symtab),
        ("symbols", str(d["symbol_count"])),
        ("functions", str(d["function_count"])),
        ("line info", "yes (.debug_line)" if d["has_dwarf_lines"] else "no"),
        ("image size", f"{d['image_size']:#x}"),
        ("segments", f"{len(d['segments'])} PT_LOAD"),
    ]
    lines = [f"{key + ':':<13}{value}" for key, value in rows]
    table = [("vaddr", "memsz", "filesz", "offset", "perms")] + [
        (
            f"{s['vaddr']:#x}",
            f"{s['memsz']:#x}",
            f"{s['filesz']:#x}",
            f"{s['offset']:#x}",
            s["perms"],
        )
        for s in d["segments"]
    ]
    widths = [max(len(row[i]) for row in table) for i in range(5)]
    for row in table:
        cells = [cell.rjust(w) for cell, w in zip(row[:4], widths, strict=False)]
        lines.append("  " + "  ".join(cells) + "  " + row[4])
    lines += _hardened_lines(d["hardened"])
    if d["warnings"]:
        lines.append(f"{'warnings:':<13}{len(d['warnings'])}")
        lines.extend(f"  - {w}" for w in d["warnings"])
    else:
        lines.append(f"{'warnings:':<13}none")
    return "\n".join(lines) + "\n"


def _entry_symbol(image: Image) -> str | None:
    """The symbol at the entry point (``_start`` usually), or None for none/stripped."""
    if image.entry == 0 and image.kind is ElfKind.SHARED:
        return None
    return image.symbolize(image.entry)


def _hardened_lines(note: dict[str, Any] | None) -> list[str]:
    """The hardening note, one fact per line (``hardened: no`` for an ordinary file)."""
    if note is None:
        return [f"{'hardened:':<13}no"]
    if "error" in note:
        return [f"{'hardened:':<13}yes, but the note is unreadable ({note['error']})"]
    lines = [f"{'hardened:':<13}yes, by leakdbt {note.get('leakdbt', '?')} "
             f"(mode {note.get('mode', '?')}, cpu {note.get('cpu', '?')})",
             f"  contract sha256 {note.get('contract_sha256', '?')}"]
    if "mode_file" in note:
        lines.append(f"  mode file {note['mode_file']}")
    for r in note.get("regions", []):
        passes = ", ".join(r.get("passes", [])) or "no pass"
        extra = f"  UNHARDENED: {r['unhardened']}" if "unhardened" in r else ""
        lines.append(f"  region {r.get('name', '?')} at {r.get('entry', 0):#x}: {passes}{extra}")
    return lines
