"""The native parts of leakdbt: the block counter behind --max-insns and --count-insns, and
check's trace recorder (leakdbt/leakage/_trace.c, loaded the same way).

Everything else is declared in pyproject.toml.  The counter is a plain C shared object that
leakdbt loads with ctypes (leakdbt/machine/blockcount.py); it is built as an extension so that
``pip install`` (editable or not) compiles it with the compiler Python was configured with.
``optional=True``: without a C compiler the install still succeeds and leakdbt counts with its
slower pure-Python hook instead (docs/cli.md, "Limits").
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("leakdbt.machine._blockcount", ["leakdbt/machine/_blockcount.c"],
                             optional=True),
                   # check's native observers (leakdbt/leakage/native.py), optional likewise
                   Extension("leakdbt.leakage._trace", ["leakdbt/leakage/_trace.c"],
                             optional=True)])
