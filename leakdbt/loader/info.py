"""What the loader sees in an ELF file, for ``leakdbt info``: a dict and a stable text report.

Both are built only from the :class:`~leakdbt.loader.image.Image`, so they show exactly what a
run would use.  Addresses are link-time (PIE and shared objects start near 0).
"""

from __future__ import annotations

from typing import Any

from leakdbt.loader.image import ElfKind, Image


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
