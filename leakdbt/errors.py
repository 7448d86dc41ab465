"""The one exception tree of leakdbt.

Every error a user can cause or meet derives from :class:`LeakDBTError` and carries the exit
status the CLI reports for it.  The CLI turns any of them into a single line on stderr; nothing
else prints tracebacks.

Exit statuses (documented in docs/cli.md):

====  ===========================================================
2     bad input: ELF file, contract, command-line usage, plugin
124   a limit stopped the guest (--max-insns, --timeout)
125   internal emulator failure or unsupported guest behaviour
126   the program is not executable (execve's EACCES), or the guest needs something
      leakdbt refuses to do (--strict)
128+N the guest was killed by signal N (crash), like a shell says
====  ===========================================================
"""

from __future__ import annotations

import signal as _signal


class LeakDBTError(Exception):
    """Base of every leakdbt error; ``exit_status`` is what the CLI exits with."""

    exit_status = 2

    def one_line(self) -> str:
        """The message the CLI prints, on one line."""
        return " ".join(str(self).split()) or type(self).__name__


class UsageError(LeakDBTError):
    """A command-line option or argument is wrong."""


class ElfError(LeakDBTError):
    """The file is not a loadable x86-64 Linux ELF (malformed, wrong class or machine)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


class ContractError(LeakDBTError):
    """A security contract is invalid; carries every problem found as (line, key, message)."""

    def __init__(self, path: str, problems: list[tuple[int, str, str]]) -> None:
        self.path = path
        self.problems = list(problems)
        super().__init__("; ".join(f"{path}:{line}: {key}: {msg}" for line, key, msg in problems))

    def lines(self) -> list[str]:
        """One ``file:LINE: key: message`` line per problem."""
        return [f"{self.path}:{line}: {key}: {msg}" for line, key, msg in self.problems]


class SuiteError(ContractError):
    """A suite file (``leakdbt suite``) is invalid; problems as for a contract."""


class PluginError(LeakDBTError):
    """A plugin was rejected at load time (bad API version, duplicate name, order cycle)."""


class NotExecutable(LeakDBTError):
    """The program lacks execute permission or is not a regular file (execve(2): EACCES);
    the status is a shell's for a command found but not executable."""

    exit_status = 126


class SandboxViolation(LeakDBTError):
    """The guest tried to reach the host outside what the user allowed."""


class TranslationError(LeakDBTError):
    """The translator cannot produce code it trusts, e.g. an instruction a pass asked for
    cannot be encoded as written (see ``leakdbt.x86.asm.AssemblyError``)."""


class GuestError(LeakDBTError):
    """Something went wrong with the guest program at run time."""

    exit_status = 125


class GuestFault(GuestError):
    """The guest crashed: a synchronous signal such as SIGSEGV, SIGFPE or SIGILL.

    ``code``, ``fault_address``, ``trapno`` and ``error_code`` are what a guest handler of
    the signal sees (siginfo's si_code and si_addr, the sigcontext's trapno, err and cr2).
    """

    def __init__(self, signo: int, address: int, where: str, detail: str = "", *,
                 code: int = 0, fault_address: int = 0, trapno: int = 0,
                 error_code: int = 0) -> None:
        self.signo = signo
        self.address = address
        self.where = where
        self.detail = detail
        self.code = code
        self.fault_address = fault_address
        self.trapno = trapno
        self.error_code = error_code
        name = _signal.Signals(signo).name
        text = f"guest killed by {name} at {where}"
        if detail:
            text += f": {detail}"
        super().__init__(text)

    @property
    def exit_status(self) -> int:  # type: ignore[override]
        return 128 + self.signo


class UnsupportedInstruction(GuestError):
    """The guest executes an instruction the engine would run wrongly (e.g. AVX)."""


class UnsupportedSyscall(GuestError):
    """The guest made a system call leakdbt does not implement and ``--strict`` is on."""

    exit_status = 126


class LimitExceeded(GuestError):
    """``--max-insns``, ``--timeout`` or ``--max-memory`` stopped the guest."""

    exit_status = 124


class Deadlock(GuestError):
    """Every guest thread waits for something nothing can send any more (a futex no thread
    will wake, with no timeout): the guest would never go on, so the run ends as a limit
    would end it.  Only where no other process can wake it either (see linux/blocking.py)."""

    exit_status = 124


class EmulatorError(GuestError):
    """The engine failed in a way that is not a guest fault (a bug in leakdbt or Unicorn)."""
