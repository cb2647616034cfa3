"""Agent roles: who runs a task, on which models, with what instructions,
context and tools.

A role is first-class: the models file's ``roles:`` gives each its default
model chain (the router's role map), a system prompt, a context policy (a
budget and the bundle tiers its tasks draw on) and tool permissions. Five
roles are built in (manager, coder, tester, researcher, writer) with a
description and a system prompt each; the models file overrides any field of
them and may add roles of its own. A task names its role; an empty role is
the default role, and a role nobody configured behaves like the default
(no system prompt, every tier, any tool, the router's fallback models).

This module is pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from orchestratord.domain.bundles import Tier

#: The role that proposes plans (ProposePlan).
MANAGER = "manager"

#: Every tier, in bundle order: a role's policy names a subset.
ALL_TIERS: tuple[Tier, ...] = tuple(Tier)

_BUILTIN: dict[str, tuple[str, str]] = {
    MANAGER: (
        "breaks a goal into a plan of small tasks for the other roles",
        "You are the manager of a team of software agents. You break goals into small, concrete "
        "tasks, each for one role, ordered by what each task needs first. You answer with what is "
        "asked for and nothing else.",
    ),
    "coder": (
        "writes and changes code",
        "You are the coder of a software team. You write correct, small, readable changes that "
        "follow the project's conventions, and say what you changed and why.",
    ),
    "tester": (
        "checks the coder's work: writes and runs tests, reports what fails",
        "You are the tester of a software team. You check the work handed to you: you write tests "
        "for it, say what passes and what fails, and how to reproduce each failure.",
    ),
    "researcher": (
        "finds facts, options and prior art, with sources",
        "You are the researcher of a software team. You find the facts a decision needs, compare "
        "the options briefly and name your sources.",
    ),
    "writer": (
        "writes documents and summaries for people",
        "You are the writer of a software team. You write clear, short documents for the people "
        "who will read them.",
    ),
}


@dataclass(frozen=True, slots=True)
class RoleProfile:
    """One role as the orchestrator applies it."""

    name: str
    #: The default model chain, best first; empty: the router's fallback (the
    #: models whose ``roles`` name it, then the default role's).
    models: tuple[str, ...] = ()
    description: str = ""
    #: The system message of the role's task runs ("" for none).
    system_prompt: str = ""
    #: Tokens of context of its tasks that set none; 0: the orchestrator's default.
    context_budget: int = 0
    #: The tiers its tasks' bundles draw on.
    tiers: tuple[Tier, ...] = ALL_TIERS
    #: Tools its jobs may offer; None: any tool.
    tools: tuple[str, ...] | None = None
    #: One of the five built-in roles (possibly changed by the models file).
    builtin: bool = False
    #: Named in the models file (or inline ``roles:``).
    configured: bool = False

    def allows_tool(self, name: str) -> bool:
        return self.tools is None or name in self.tools

    def excluded_tiers(self) -> frozenset[Tier]:
        return frozenset(ALL_TIERS) - frozenset(self.tiers)


@dataclass(frozen=True, slots=True)
class RoleSettings:
    """A role's fields as configured (the long form of a models file entry);
    None keeps the built-in value."""

    models: Sequence[str] = ()
    description: str | None = None
    system_prompt: str | None = None
    context_budget: int | None = None
    tiers: Sequence[str] | None = None
    tools: Sequence[str] | None = None
    #: Whether ``tools`` was given (an explicit empty list forbids every tool).
    tools_given: bool = False


@dataclass(frozen=True)
class RoleBook:
    """Every known role: the built-in ones, then those of the models file, by name."""

    default_role: str = "default"
    roles: Mapping[str, RoleProfile] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        chains: Mapping[str, Sequence[str]],
        settings: Mapping[str, RoleSettings],
        default_role: str = "default",
    ) -> RoleBook:
        """The built-in roles overridden by ``settings`` (the long form) and
        ``chains`` (every role's model chain, short or long form)."""
        roles: dict[str, RoleProfile] = {}
        for name, (description, prompt) in _BUILTIN.items():
            roles[name] = RoleProfile(name, description=description, system_prompt=prompt, builtin=True)
        roles.setdefault(
            default_role, RoleProfile(default_role, description="the role of a task that names none")
        )
        for name in sorted({*chains, *settings}):
            base = roles.get(name, RoleProfile(name))
            given = settings.get(name, RoleSettings())
            roles[name] = RoleProfile(
                name=name,
                models=tuple(chains.get(name, given.models)),
                description=base.description if given.description is None else given.description,
                system_prompt=base.system_prompt if given.system_prompt is None else given.system_prompt,
                context_budget=base.context_budget if given.context_budget is None else given.context_budget,
                tiers=base.tiers if given.tiers is None else tiers_of(given.tiers),
                tools=tuple(given.tools or ()) if given.tools_given else base.tools,
                builtin=base.builtin,
                configured=True,
            )
        return cls(default_role, dict(sorted(roles.items())))

    def get(self, role: str) -> RoleProfile:
        """The role's profile; the default role's for "" and for a role nobody
        configured (under its own name)."""
        name = role or self.default_role
        found = self.roles.get(name)
        if found is not None:
            return found
        default = self.roles.get(self.default_role, RoleProfile(self.default_role))
        return RoleProfile(name, models=(), tiers=default.tiers, tools=default.tools)

    def known(self, role: str) -> bool:
        return (role or self.default_role) in self.roles

    def names(self) -> list[str]:
        return list(self.roles)

    def same_role(self, a: str, b: str) -> bool:
        """Whether two tasks' roles are one role ("" is the default role)."""
        return (a or self.default_role) == (b or self.default_role)


def tiers_of(names: Iterable[str]) -> tuple[Tier, ...]:
    """Tier names ("index", "required", ...) as tiers in bundle order.

    Raises:
        ValueError: a name is not a tier.
    """
    wanted = set()
    for name in names:
        try:
            wanted.add(Tier[name.upper()])
        except KeyError:
            raise ValueError(f"unknown tier {name!r}") from None
    return tuple(t for t in ALL_TIERS if t in wanted)
