"""The ``--stats`` report printed on exit."""

from __future__ import annotations

from leakdbt.run.session import ExecResult


def format_stats(result: ExecResult) -> str:
    """Human-readable statistics of one run, one fact per line."""
    lines = ["leakdbt stats:"]
    lines.append(f"  exit status:        {result.exit_status}")
    lines.append(f"  wall time:          {result.wall_time:.3f} s")
    insns = "not counted (use --count-insns)" if result.instructions is None else str(
        result.instructions)
    lines.append(f"  guest instructions: {insns}")
    if result.blocks_translated is not None:
        lines.append(f"  blocks translated:  {result.blocks_translated}")
    if result.translation is not None:
        lines.append("  translation:")
        for key, value in result.translation.items():
            if isinstance(value, dict):
                lines.append(f"    {key}:")
                for name, per_mode in value.items():
                    lines.append(f"      {name:<30} {per_mode}")
            elif value is not None:
                lines.append(f"    {key + ':':<26} {value}")
    if result.scope is not None:
        lines.append("  scope (protect.functions, callees included):" if "entries" in result.scope
                     else "  scope (the whole run: no protect.functions):")
        for key, value in result.scope.items():
            lines.append(f"    {key + ':':<26} {value}")
    total = sum(result.syscalls.values())
    lines.append(f"  system calls:       {total}")
    for name, count in sorted(result.syscalls.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"    {name:<20} {count}")
    return "\n".join(lines) + "\n"
