"""Render a :class:`~leakdbt.contract.mapping.Plan` for people (text) and tools (JSON).

The text says, for each secret and region, what the adversary can observe on this CPU and
which mechanism answers it, in words a security reviewer can check against the contract.
"""

from __future__ import annotations

import os
from typing import Any

from leakdbt.contract.mapping import ADVERSARY_TEXT, OBSERVER_TEXT, PassStep, Plan, RegionPlan
from leakdbt.contract.model import (
    Contract,
    FunctionRef,
    ResolvedAddress,
    Secret,
)
from leakdbt.contract.profiles import LATENCY_CLASSES, Fact, Profile

JSON_FORMAT = 1


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _module(mod: str | None, binary: str) -> str:
    return mod if mod else os.path.basename(binary)


def _where(addr: ResolvedAddress, binary: str) -> str:
    return f"{addr.symbolic} = {addr.address:#x} in {_module(addr.module, binary)}"


def _params(step: PassStep) -> str:
    if not step.params:
        return ""
    return " (" + ", ".join(f"{k}={_value(v)}" for k, v in step.params) + ")"


def _value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _fact(fact: Fact, yes: str, no: str) -> str:
    return f"{yes if fact.value else no} ({fact.basis})"


def _profile_lines(profile: Profile, reason: str) -> list[str]:
    lines = [f"CPU profile: {profile.name} - {profile.title}"]
    if reason:
        lines.append(f"  why this profile: {reason}")
    lines.append(f"  cache lines: {profile.line_size} bytes ({profile.cache_line.basis})")
    lines.append("  SMT sibling threads: " + _fact(profile.smt, "yes", "no"))
    lines.append("  offsets within a line leak: " + _fact(
        profile.intra_line, f"yes, in {profile.intra_line_unit}-byte units", "no"))
    for cls, fact in profile.latency:
        lines.append(f"  {LATENCY_CLASSES[cls]}: " + _fact(
            fact, "operand-dependent latency", "constant latency"))
    return lines


def _secret_lines(i: int, secret: Secret, plan: Plan) -> list[str]:
    contract = plan.contract
    lines = [f"  {i + 1}. {secret.name}: {secret.describe()}"]
    if secret.why:
        lines.append(f"     why: {_one_line(secret.why)}")
    binding = contract.binding
    resolved = binding.secrets[i] if binding else None
    if resolved and resolved.function and binding:
        f = resolved.function
        lines.append(f"     entered at {f.name} = {f.start:#x} in "
                     f"{_module(f.module, binding.binary)}")
    if resolved and resolved.span and binding:
        lines.append(f"     stored at {_where(resolved.span.start, binding.binary)}, "
                     f"{resolved.span.length} bytes")
    check = contract.check
    where = "into the input" if secret.is_input else "there"
    lines.append(f"     checking: {check.trials} trials (seed {check.seed}) each write "
                 f"{secret.length} random byte{'s' if secret.length != 1 else ''} {where}")
    lines.append(f"     the adversary sees it through {', '.join(o.value for o in plan.observed)} "
                 "wherever control flow, operand-dependent latency or addresses depend on it")
    return lines


def _region_lines(rp: RegionPlan, plan: Plan) -> list[str]:
    binding = plan.contract.binding
    region = rp.region
    if region is None:
        funcs = plan.contract.protect.functions
        scope = (f"function{'s' if len(funcs) > 1 else ''} "
                 f"{', '.join(str(f) for f in funcs)}" if funcs else "the whole program")
        lines = [f"  No region is named: the translator hardens the blocks of {scope} that "
                 "depend on a secret, with the passes below as they apply:"]
    else:
        kind = region.kind.value if region.kind else "any (classified from its instructions)"
        lines = [f"  {rp.index + 1}. {region.at}: kind {kind}"]
        if region.why:
            lines.append(f"     why: {_one_line(region.why)}")
        if rp.resolved and binding:
            lines.append(f"     block {_where(rp.resolved.at, binding.binary)}, in function "
                         f"{_function(rp.resolved.function)}")
            if rp.resolved.table:
                t = rp.resolved.table
                lines.append(f"     table {_where(t.start, binding.binary)}, {t.length} bytes")
    if not rp.passes:
        lines.append("     no pass is needed on this CPU")
    for n, step in enumerate(rp.passes, 1):
        cond = f" {step.condition}:" if step.condition else ""
        lines.append(f"     {n}. {step.name}{_params(step)} -{cond} {step.reason}")
    for skip in rp.skipped:
        lines.append(f"     not applied: {skip.name} - {skip.reason}")
    for gap in rp.gaps:
        lines.append(f"     not covered: {gap}")
    return lines


def _function(f: FunctionRef) -> str:
    return f"{f.name} ({f.start:#x}, {f.size} bytes)"


def explain_text(plan: Plan, profile_reason: str = "") -> str:
    """The mapping from the contract's security terms to mechanisms, for a reviewer."""
    contract = plan.contract
    protect = contract.protect
    lines = [f"Contract: {contract.path} (format version {contract.version})"]
    if contract.description:
        lines.append(f"  {_one_line(contract.description)}")
    binding = contract.binding
    if binding:
        lines.append(f"Binary: {binding.binary} ({binding.binary_kind}"
                     f"{', position-independent' if binding.is_pie else ', fixed addresses'})")
        for lib in binding.libraries:
            lines.append(f"  library {lib.name}: {lib.path}")
    else:
        lines.append("Binary: not given (no --binary): code locations are not resolved")
    lines += ["", *_profile_lines(plan.profile, profile_reason), ""]
    lines.append(f"Adversary: {protect.adversary.value} - {ADVERSARY_TEXT[protect.adversary]}")
    observed = [v for v in plan.observers if v.observed]
    unobserved = [v for v in plan.observers if not v.observed]
    lines.append("  observes:")
    lines += [f"    + {v.observer.value}: {OBSERVER_TEXT[v.observer]}" for v in observed]
    if unobserved:
        lines.append("  does not observe:")
        lines += [f"    - {v.observer.value}: {v.reason}" for v in unobserved]
    lines.append(f"Policy: {protect.policy.value} - {plan.mode_reason}")
    lines += ["", "Secrets:"]
    for i, secret in enumerate(contract.secrets):
        lines += _secret_lines(i, secret, plan)
    lines += ["", "Regions:"]
    for rp in plan.regions or ((plan.scope,) if plan.scope else ()):
        lines += _region_lines(rp, plan)
    lines += ["", "Passes (they run in the order they declare: leakdbt passes):"]
    if not plan.passes:
        lines.append("  none")
    for n, step in enumerate(plan.passes, 1):
        used = [str(rp.index + 1) for rp in plan.regions
                if any(s.name == step.name for s in rp.passes)]
        where = f" - regions {', '.join(used)}" if used else ""
        lines.append(f"  {n}. {step.name}{_params(step)}{where}")
    if plan.mode.value == "never":
        lines.append("  (policy never: none of them is applied)")
    if plan.gaps:
        lines += ["", "Not covered by any pass:"]
        lines += [f"  - {gap}" for gap in plan.gaps]
    return "\n".join(lines) + "\n"


def _address_json(addr: ResolvedAddress) -> dict[str, Any]:
    return {"module": addr.module, "module_path": addr.module_path,
            "address": addr.address, "symbolic": addr.symbolic}


def _function_json(f: FunctionRef) -> dict[str, Any]:
    return {"module": f.module, "name": f.name, "start": f.start, "size": f.size}


def _step_json(step: PassStep) -> dict[str, Any]:
    out: dict[str, Any] = {"name": step.name, "params": dict(step.params), "reason": step.reason}
    if step.condition:
        out["condition"] = step.condition
    return out


def _region_json(rp: RegionPlan) -> dict[str, Any]:
    region = rp.region
    out: dict[str, Any] = {"index": rp.index}
    if region is not None:
        out.update({
            "at": str(region.at), "kind": region.kind.value if region.kind else None,
            "why": region.why, "bound": region.bound,
            "table": None if region.table is None else {
                "symbol": str(region.table.symbol) if region.table.symbol else None,
                "length": region.table.length},
        })
    if rp.resolved is not None:
        out["resolved"] = {
            "at": _address_json(rp.resolved.at),
            "function": _function_json(rp.resolved.function),
            "table": None if rp.resolved.table is None else {
                "start": _address_json(rp.resolved.table.start),
                "length": rp.resolved.table.length},
        }
    out["passes"] = [_step_json(s) for s in rp.passes]
    out["skipped"] = [{"name": s.name, "reason": s.reason} for s in rp.skipped]
    out["gaps"] = list(rp.gaps)
    return out


def _secret_json(i: int, secret: Secret, contract: Contract) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": secret.name, "source": type(secret.source).__name__.removesuffix("Source")
        .lower(), "description": secret.source.describe(), "length": secret.length,
        "format": secret.format.value, "why": secret.why,
    }
    resolved = contract.binding.secrets[i] if contract.binding else None
    if resolved is not None:
        out["resolved"] = {
            "function": _function_json(resolved.function) if resolved.function else None,
            "span": None if resolved.span is None else {
                "start": _address_json(resolved.span.start), "length": resolved.span.length},
        }
    return out


def explain_json(plan: Plan, profile_reason: str = "") -> dict[str, Any]:
    """The same mapping as :func:`explain_text`, as JSON-ready data."""
    contract, profile = plan.contract, plan.profile
    binding = contract.binding
    return {
        "format": JSON_FORMAT,
        "contract": {"path": contract.path, "version": contract.version,
                     "description": contract.description},
        "binary": None if binding is None else {
            "path": binding.binary, "kind": binding.binary_kind, "is_pie": binding.is_pie,
            "libraries": [{"name": lib.name, "path": lib.path} for lib in binding.libraries]},
        "profile": {
            "name": profile.name, "title": profile.title, "reason": profile_reason,
            "cache_line": profile.line_size, "smt": profile.has_smt,
            "intra_line_leaks": profile.intra_line_leaks,
            "intra_line_unit": profile.intra_line_unit,
            "variable_latency": [cls for cls, fact in profile.latency if fact.value],
        },
        "adversary": contract.protect.adversary.value,
        "observers": [{"name": v.observer.value, "observed": v.observed, "reason": v.reason}
                      for v in plan.observers],
        "policy": contract.protect.policy.value,
        "mode": plan.mode.value,
        "mode_reason": plan.mode_reason,
        "secrets": [_secret_json(i, s, contract) for i, s in enumerate(contract.secrets)],
        "regions": [_region_json(rp) for rp in plan.regions],
        "scope": None if plan.scope is None else _region_json(plan.scope),
        "passes": [_step_json(s) for s in plan.passes],
        "skipped": [{"name": s.name, "reason": s.reason} for s in plan.skipped],
        "gaps": list(plan.gaps),
    }
