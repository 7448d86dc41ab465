"""Where a run's secret values go, as the contract's sources say.

Before the run they are part of its inputs: argv, environment, standard input and files
(:class:`SecretInputs`).  Once the process is set up, the rest is written into it
(:func:`place_in_process`): a register, or the buffer it points to, at every entry of its
function; a global object when its module loads.  ``leakdbt check`` runs every trial this
way; ``leakdbt analyze`` runs the same way and taints what was placed, told where by a
:class:`PlacementSink`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from leakdbt.contract.model import (
    ArgvSource,
    Contract,
    EnvSource,
    FileSource,
    PointerSource,
    RegisterSource,
    Secret,
    StdinSource,
    SymbolSource,
)
from leakdbt.errors import UsageError
from leakdbt.loader.modules import LoadedModule, ModuleMap
from leakdbt.machine.machine import Machine


@dataclass(frozen=True)
class SecretInputs:
    """The inputs of a run with ``values`` (one per secret of ``contract``, in order) in
    place of the secret parts; everything else as the contract's ``[check]`` gives it."""

    contract: Contract
    values: Sequence[bytes]

    def _of(self, kind: type) -> list[tuple[Secret, Any, bytes]]:
        return [(s, s.source, v) for s, v in zip(self.contract.secrets, self.values, strict=True)
                if isinstance(s.source, kind)]

    def argv(self, binary: str) -> list[str]:
        args = list(self.contract.check.args)
        for secret, source, value in self._of(ArgvSource):
            text = os.fsdecode(secret.render(value))
            if source.index - 1 < len(args):
                args[source.index - 1] = text
            else:
                args.append(text)
        return [binary, *args]

    def env(self) -> list[str]:
        env = dict(self.contract.check.env)
        for secret, source, value in self._of(EnvSource):
            env[source.name] = os.fsdecode(secret.render(value))
        return [f"{k}={v}" for k, v in sorted(env.items())]

    def stdin(self) -> bytes:
        data = bytearray((self.contract.check.stdin or "").encode())
        for secret, source, value in self._of(StdinSource):
            _overwrite(data, source.offset, secret.render(value))
        return bytes(data)

    def files(self) -> dict[str, bytes]:
        """Files holding secrets (relative guest path -> contents): the file in the current
        directory, if any, with the secrets written over it."""
        out: dict[str, bytearray] = {}
        for secret, source, value in self._of(FileSource):
            if os.path.isabs(source.path):
                raise UsageError(f"secret {secret.name}: leakdbt writes file secrets into a "
                                 "fresh working directory, so the path must be relative, "
                                 f"not {source.path!r}")
            if source.path not in out:
                out[source.path] = bytearray(_read_or_empty(source.path))
            _overwrite(out[source.path], source.offset, secret.render(value))
        return {p: bytes(d) for p, d in out.items()}


class PlacementSink(Protocol):
    """Told where each secret (by its index in the contract) is in the process."""

    def memory(self, index: int, address: int, length: int) -> None: ...

    def register(self, index: int, register: str, length: int) -> None: ...


def place_in_process(machine: Machine, modules: ModuleMap, contract: Contract,
                     values: Sequence[bytes], sink: PlacementSink | None = None) -> None:
    """Write the register, buffer and global secrets into the process (call at start, before
    the guest runs), for the modules loaded now and those the guest loads later.  ``sink``
    hears where every secret is: argv and environment strings now, registers and buffers at
    each entry, globals at load.  (Standard input and file secrets reach memory through
    read(2), which this does not watch.)"""
    binding = contract.binding
    assert binding is not None
    at_entry: list[tuple[tuple[str | None, int], Callable[[], None]]] = []
    at_load: list[tuple[str | None, int, int, bytes]] = []
    for index, (secret, resolved, value) in enumerate(zip(contract.secrets, binding.secrets,
                                                          values, strict=True)):
        source = secret.source
        if isinstance(source, ArgvSource) and sink is not None:
            sink.memory(index, *argv_string(machine, source.index))
        elif isinstance(source, EnvSource) and sink is not None:
            where = _env_string(machine, source.name)
            if where is not None:
                sink.memory(index, *where)
        elif isinstance(source, RegisterSource | PointerSource) and resolved is not None \
                and resolved.function is not None:
            at_entry.append(((resolved.function.module, resolved.function.start),
                             _entry_writer(machine, index, source, value, sink)))
        elif isinstance(source, SymbolSource) and resolved is not None \
                and resolved.span is not None:
            start = resolved.span.start
            at_load.append((start.module, start.address, index, value))

    def on_module(mod: LoadedModule) -> None:
        for (module, start), write in at_entry:
            if mod.is_named(module):
                _on_entry(machine, start + mod.base, write)
        for module, address, index, value in at_load:
            if mod.is_named(module):
                machine.mem.write(address + mod.base, value)
                if sink is not None:
                    sink.memory(index, address + mod.base, len(value))

    for mod in modules.modules():
        on_module(mod)
    modules.listeners.append(on_module)
    machine.hooks.retranslate()  # the hooks apply to code translated before them too


def _entry_writer(machine: Machine, index: int, source: RegisterSource | PointerSource,
                  value: bytes, sink: PlacementSink | None) -> Callable[[], None]:
    """Writes ``value`` into the register, or the buffer it points to (at a function entry)."""
    reg = source.register
    width = 16 if reg.startswith("xmm") else 8
    number = int.from_bytes(value[:width].ljust(width, b"\0"), "little")

    def write() -> None:
        if isinstance(source, PointerSource):
            buffer = machine.reg(reg)
            machine.mem.write(buffer, value)
            if sink is not None:
                sink.memory(index, buffer, len(value))
        else:
            machine.set_reg(reg, number)
            if sink is not None:
                sink.register(index, reg, min(len(value), width))
    return write


def _on_entry(machine: Machine, entry: int, fn: Callable[[], None]) -> None:
    """Run ``fn`` every time the guest is about to execute runtime address ``entry``."""
    machine.hooks.at(entry, lambda address, size: fn())


def argv_string(machine: Machine, index: int) -> tuple[int, int]:
    """(address, length) of argv[index] on the initial stack (rsp: argc, then argv[])."""
    rsp = machine.reg("rsp")
    argc = int.from_bytes(machine.mem.read(rsp, 8), "little")
    if not 0 <= index < argc:
        raise IndexError(f"argv[{index}] with argc={argc}")
    ptr = int.from_bytes(machine.mem.read(rsp + 8 + 8 * index, 8), "little")
    return ptr, _length(machine, ptr)


def _env_string(machine: Machine, name: str) -> tuple[int, int] | None:
    """(address, length) of the value of environment variable ``name`` on the initial stack
    (argc, argv[], NULL, envp[], NULL), or None when it is not set."""
    rsp = machine.reg("rsp")
    argc = int.from_bytes(machine.mem.read(rsp, 8), "little")
    slot = rsp + 8 * (argc + 2)
    prefix = name.encode() + b"="
    while (ptr := int.from_bytes(machine.mem.read(slot, 8), "little")) != 0:
        if machine.mem.read(ptr, len(prefix)) == prefix:
            return ptr + len(prefix), _length(machine, ptr + len(prefix))
        slot += 8
    return None


def _length(machine: Machine, address: int) -> int:
    """The length of the NUL-terminated string at ``address``."""
    end = address
    while machine.mem.read(end, 1) != b"\0":
        end += 1
    return end - address


def _overwrite(data: bytearray, offset: int, value: bytes) -> None:
    if len(data) < offset + len(value):
        data.extend(bytes(offset + len(value) - len(data)))
    data[offset:offset + len(value)] = value


def _read_or_empty(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""
