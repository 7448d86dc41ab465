# leakdbt: two commands set everything up — `make run` and `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEBS := busybox-static graphviz chromium libssl-dev libsodium-dev binutils linux-libc-dev \
        libtomcrypt-dev libb64-dev nettle-dev libgmp-dev libmbedtls-dev libgcrypt20-dev \
        valgrind
BENCH_DEBS := qemu-user

.PHONY: run test check bench fuzz install debs binaries clean

$(STAMP): pyproject.toml setup.py leakdbt/machine/_blockcount.c leakdbt/leakage/_trace.c
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Debian packages the tests and the test programs need (real programs to compare against
# native runs; OpenSSL's and libsodium's static libraries for the library harnesses).
debs:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  (apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null) \
	  || { echo "cannot install$$missing (need root and Debian's package archive)"; exit 1; }; fi

binaries: debs
	$(MAKE) -C test_binaries

run: install binaries
	$(BIN)/leakdbt exec --contract contracts/ct_modexp.toml --mode hardened --stats \
	  test_binaries/build/dynamic/ct_modexp 0123456789abcdef

test: install debs binaries
	$(BIN)/pytest -q -n 2 tests

check: install
	$(BIN)/ruff check leakdbt plugins tests
	$(BIN)/mypy

bench: install binaries
	@for p in $(BENCH_DEBS); do dpkg -s $$p >/dev/null 2>&1 || (apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$p >/dev/null); done
	$(BIN)/python bench/run.py

# Mutated ELF files and contracts through a fork server (not part of `make test`); updates the
# figures in docs/reliability.md.  FUZZ_ARGS="--elf 500 --contracts 500" for a short run.
fuzz: install binaries
	$(BIN)/python fuzz/run.py --report docs/reliability.md $(FUZZ_ARGS)

clean:
	$(MAKE) -C test_binaries clean
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build leakdbt/machine/_blockcount*.so leakdbt/leakage/_trace*.so
