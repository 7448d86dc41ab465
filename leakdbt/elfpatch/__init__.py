"""``leakdbt harden``: hardened native ELF files (docs/harden.md)."""
