"""Routing: which model (target) runs a job, and why.

:func:`route` is a pure function of the job's facts (:class:`RouteFacts`) and
the model catalog (:class:`ModelCatalog`): no I/O, no clock, no randomness, so
the same inputs always give the same :class:`RouteDecision` and a test can
check any policy with plain objects. Keep it that way as the policy grows:
data classes and the sensitive-data denylist, budgets, and VRAM/KV-aware
escalation will arrive as more facts (a pool snapshot, a budget balance) and
more rules here, each adding its stable rule name to the report; whoever
gathers those facts does the I/O and passes them in.

Rules today, in order:

1. A job that names a model gets exactly that model (REQUESTED_MODEL; the others
   are NOT_REQUESTED). An unknown name is NotFound(MODEL_NOT_FOUND).
2. Otherwise the chain is the models whose roles include the job's role (an
   empty role means the catalog's default role) in config order, then those
   whose roles include the default role, then, if still none, the first model.
   The first that fits is chosen (ROLE_DEFAULT); the rest are fallbacks
   (ROLE_FALLBACK); models outside the chain are ROLE_MISMATCH.
3. A candidate whose context is shorter than prompt_tokens + max_tokens is
   passed over (CONTEXT_TOO_LONG); when every candidate is passed over the job
   is InvalidArgument(CONTEXT_TOO_LONG) on spec.max_tokens.
4. A job that offers tools goes only to targets whose latest tool-call
   conformance probe passed; the others are passed over
   (TOOLS_NOT_CONFORMANT). When none is left (or the named model has not
   passed), the job is FailedPrecondition(NO_TOOL_CAPABLE_TARGET).
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field

from hearth.errors import FailedPrecondition, InvalidArgument, NotFound

#: Version of the RoutingReport schema this module fills in.
REPORT_SCHEMA_VERSION = 1


class CandidateReason(enum.StrEnum):
    """Why a candidate was taken or passed over; stable names in reports."""

    REQUESTED_MODEL = "REQUESTED_MODEL"
    NOT_REQUESTED = "NOT_REQUESTED"
    ROLE_DEFAULT = "ROLE_DEFAULT"
    ROLE_FALLBACK = "ROLE_FALLBACK"
    ROLE_MISMATCH = "ROLE_MISMATCH"
    CONTEXT_TOO_LONG = "CONTEXT_TOO_LONG"
    TOOLS_NOT_CONFORMANT = "TOOLS_NOT_CONFORMANT"


@dataclass(frozen=True, slots=True)
class CatalogModel:
    """One model the router can send jobs to.

    Attributes:
        name: the name jobs use; the target name in chains and reports.
        context_length: prompt plus completion, in tokens.
        roles: the roles it is the default for, e.g. ("coder",).
        engine: the engine kind that serves it.
        path: where its weights are (part of the catalog's identity only).
        tools_conformant: its latest tool-call conformance probe passed.
    """

    name: str
    context_length: int
    roles: tuple[str, ...] = ()
    engine: str = ""
    path: str = ""
    tools_conformant: bool = False


@dataclass(frozen=True)
class ModelCatalog:
    """The models, in config order, and the role a job without one gets.

    ``version`` is a short hash of the whole content, so a report says exactly
    which catalog and policy decided. Model names must be unique.
    """

    models: tuple[CatalogModel, ...]
    default_role: str = "default"
    version: str = field(init=False)
    _by_name: Mapping[str, CatalogModel] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name: dict[str, CatalogModel] = {}
        for model in self.models:
            if model.name in by_name:
                raise ValueError(f"model {model.name!r} is listed twice")
            by_name[model.name] = model
        content = json.dumps(
            {"default_role": self.default_role, "models": [asdict(m) for m in self.models]}, sort_keys=True
        )
        object.__setattr__(self, "version", hashlib.sha256(content.encode()).hexdigest()[:12])
        object.__setattr__(self, "_by_name", by_name)

    @classmethod
    def of(cls, models: Iterable[CatalogModel], default_role: str = "default") -> ModelCatalog:
        return cls(tuple(models), default_role)

    def get(self, name: str) -> CatalogModel | None:
        return self._by_name.get(name)


@dataclass(frozen=True, slots=True)
class RouteFacts:
    """What routing knows about a job. Never the prompt text.

    Attributes:
        job_id: for reports and traces only; never changes the decision.
        model: the model the job names; "" for the default of its role.
        role: the agent role; "" for the catalog's default role.
        prompt_tokens: tokens in the prompt and context, as the caller estimates.
        max_tokens: the most tokens the job may generate.
        needs_tools: the job offers tools the model may call.
    """

    job_id: str = ""
    model: str = ""
    role: str = ""
    prompt_tokens: int = 0
    max_tokens: int = 0
    needs_tools: bool = False

    @property
    def needed_tokens(self) -> int:
        return self.prompt_tokens + self.max_tokens


@dataclass(frozen=True, slots=True)
class RouteCandidate:
    target: str
    selected: bool
    reason: CandidateReason
    detail: str


@dataclass(frozen=True, slots=True)
class RoutingReport:
    """Why a decision was made; shaped like hearth.api.router.v1.RoutingReport."""

    policy_version: str
    chosen_target: str
    candidates: tuple[RouteCandidate, ...]
    #: Stable names of the rules that matched, in order, e.g. "role_default:coder".
    matched_rules: tuple[str, ...]
    schema_version: int = REPORT_SCHEMA_VERSION


@dataclass(frozen=True, slots=True)
class RouteDecision:
    #: Target names, best first: the first is chosen, the rest are fallbacks.
    chain: tuple[str, ...]
    report: RoutingReport


def route(facts: RouteFacts, catalog: ModelCatalog) -> RouteDecision:
    """Decide which model runs a job (see the module docstring for the rules).

    Raises:
        NotFound: MODEL_NOT_FOUND, the job names a model the catalog lacks, or
            the catalog is empty.
        InvalidArgument: CONTEXT_TOO_LONG on ``spec.max_tokens``, no candidate's
            context holds prompt_tokens + max_tokens.
    """
    if facts.model:
        return _route_requested(facts, catalog)
    if not catalog.models:
        raise NotFound("no models are configured", reason="MODEL_NOT_FOUND")
    return _route_by_role(facts, catalog)


def _route_requested(facts: RouteFacts, catalog: ModelCatalog) -> RouteDecision:
    model = catalog.get(facts.model)
    if model is None:
        known = ", ".join(m.name for m in catalog.models) or "none"
        raise NotFound(
            f"model {facts.model!r} is not configured (known: {known})",
            reason="MODEL_NOT_FOUND",
            metadata={"model": facts.model},
        )
    if model.context_length < facts.needed_tokens:
        raise _context_too_long(facts, model.context_length)
    if facts.needs_tools and not model.tools_conformant:
        raise _no_tool_target(f"model {model.name!r} has not passed the tool-call conformance probe")
    candidates = tuple(
        RouteCandidate(model.name, True, CandidateReason.REQUESTED_MODEL, "the job names this model")
        if m is model
        else RouteCandidate(m.name, False, CandidateReason.NOT_REQUESTED, f"the job names {model.name}")
        for m in catalog.models
    )
    report = RoutingReport(catalog.version, model.name, candidates, ("requested_model",))
    return RouteDecision((model.name,), report)


def _route_by_role(facts: RouteFacts, catalog: ModelCatalog) -> RouteDecision:
    role = facts.role or catalog.default_role
    default_role = catalog.default_role
    wanted = role if role == default_role else f"{role} or {default_role}"
    # (model, why it is in the chain), in chain order.
    ordered: list[tuple[CatalogModel, str]] = []
    rules: list[str] = []
    for m in catalog.models:
        if role in m.roles:
            ordered.append((m, f"default for role {role}"))
    if ordered:
        rules.append(f"role_default:{role}")
    if role != default_role:
        before = len(ordered)
        for m in catalog.models:
            if default_role in m.roles and role not in m.roles:
                ordered.append((m, f"default for role {default_role}"))
        if len(ordered) > before:
            rules.append(f"role_fallback:{default_role}" if before else f"role_default:{default_role}")
    if not ordered:
        first = catalog.models[0]
        ordered.append((first, f"no model has role {wanted}; first configured model"))
        rules.append("first_model")

    needed = facts.needed_tokens
    chain: list[str] = []
    candidates: list[RouteCandidate] = []
    for m, why in ordered:
        if facts.needs_tools and not m.tools_conformant:
            candidates.append(
                RouteCandidate(
                    m.name,
                    False,
                    CandidateReason.TOOLS_NOT_CONFORMANT,
                    f"{why}; has not passed the tool probe",
                )
            )
        elif m.context_length < needed:
            candidates.append(
                RouteCandidate(
                    m.name,
                    False,
                    CandidateReason.CONTEXT_TOO_LONG,
                    f"{why}; context {m.context_length} < {needed} tokens needed",
                )
            )
        elif not chain:
            candidates.append(RouteCandidate(m.name, True, CandidateReason.ROLE_DEFAULT, why))
            chain.append(m.name)
        else:
            candidates.append(RouteCandidate(m.name, False, CandidateReason.ROLE_FALLBACK, why))
            chain.append(m.name)
    passed_over = {c.reason for c in candidates if not c.selected and c.target not in chain}
    if not chain:
        if CandidateReason.CONTEXT_TOO_LONG in passed_over:
            raise _context_too_long(facts, max(m.context_length for m, _ in ordered))
        raise _no_tool_target(f"no {wanted} model has passed the tool-call conformance probe")
    if CandidateReason.TOOLS_NOT_CONFORMANT in passed_over:
        rules.append("tools_conformant")
    if CandidateReason.CONTEXT_TOO_LONG in passed_over:
        rules.append("context_too_long")

    in_chain = {m.name for m, _ in ordered}
    for m in catalog.models:
        if m.name not in in_chain:
            roles = ", ".join(m.roles) or "none"
            candidates.append(
                RouteCandidate(m.name, False, CandidateReason.ROLE_MISMATCH, f"roles [{roles}] lack {wanted}")
            )
    report = RoutingReport(catalog.version, chain[0], tuple(candidates), tuple(rules))
    return RouteDecision(tuple(chain), report)


def _no_tool_target(why: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"the job offers tools, and {why}; run `hearth probe TARGET` on a model that makes tool calls",
        reason="NO_TOOL_CAPABLE_TARGET",
    )


def _context_too_long(facts: RouteFacts, largest: int) -> InvalidArgument:
    needed = facts.needed_tokens
    return InvalidArgument(
        "spec.max_tokens",
        f"prompt_tokens ({facts.prompt_tokens}) plus max_tokens ({facts.max_tokens}) needs {needed} tokens; "
        f"the largest context is {largest}",
        reason="CONTEXT_TOO_LONG",
        needed_tokens=str(needed),
        context_length=str(largest),
    )
