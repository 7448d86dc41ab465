"""Security contracts: what is secret, whom to fear, how strict to be (docs/contracts.md).

``load(path, binary=None)`` reads and validates a contract (and, given a binary, resolves its
code locations) into the immutable objects of :mod:`leakdbt.contract.model`;
:func:`leakdbt.contract.mapping.plan` turns it into hardening passes for a CPU profile.
"""

from leakdbt.contract.dump import dumps
from leakdbt.contract.load import load, loads
from leakdbt.contract.mapping import PASS_KIND, Observer, PassStep, Plan, plan
from leakdbt.contract.model import (
    CONTRACT_VERSION,
    Adversary,
    ArgvSource,
    Binding,
    Check,
    Contract,
    EnvSource,
    FileSource,
    Location,
    Output,
    PointerSource,
    Policy,
    Protect,
    Region,
    RegionKind,
    RegisterSource,
    Secret,
    StdinSource,
    SymbolSource,
    TableBounds,
    ValueFormat,
)
from leakdbt.contract.profiles import (
    Profile,
    all_profiles,
    get_profile,
    host_profile,
    select_profile,
)

__all__ = [
    "CONTRACT_VERSION", "PASS_KIND", "Adversary", "ArgvSource", "Binding", "Check",
    "Contract", "EnvSource", "FileSource", "Location", "Observer", "Output", "PassStep",
    "Plan", "PointerSource", "Policy", "Profile", "Protect", "Region", "RegionKind",
    "RegisterSource", "Secret", "StdinSource", "SymbolSource", "TableBounds", "ValueFormat",
    "all_profiles", "dumps", "get_profile", "host_profile", "load", "loads", "plan",
    "select_profile",
]
