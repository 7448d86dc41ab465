"""Which functions a module has: its function symbols and — in a binary without a full
symbol table (stripped) — also the targets of its direct calls and its entry point, named
``sub_ADDR``."""

from __future__ import annotations

from leakdbt.loader.image import PF_X, Image, Symbol, per_image
from leakdbt.x86.disasm import direct_call_targets


@per_image
def code_functions(image: Image) -> tuple[Symbol, ...]:
    """Functions of ``image`` by address, each with a size (up to the next function when
    the symbol table gives none)."""
    funcs = list(image.functions)
    if not image.has_symtab:
        known = {f.value for f in funcs}
        starts = {image.entry} if image.entry else set()
        for code_seg in image.segments:
            if code_seg.flags & PF_X:
                lo, hi = code_seg.vaddr, code_seg.vaddr + code_seg.filesz
                starts |= {t for t in direct_call_targets(image.read(lo, hi - lo), lo)
                           if lo <= t < hi}
        funcs += [Symbol(f"sub_{a:x}", a, 0, "func") for a in starts - known
                  if not any(f.value <= a < f.value + f.size for f in funcs)]
        funcs.sort(key=lambda f: f.value)
    out = []
    for i, f in enumerate(funcs):
        if f.size:
            out.append(f)
            continue
        seg = image.segment_at(f.value)
        end = seg.vaddr + seg.filesz if seg else f.value
        if i + 1 < len(funcs):
            end = min(end, funcs[i + 1].value)
        if end > f.value:
            out.append(Symbol(f.name, f.value, end - f.value, f.kind))
    return tuple(out)
