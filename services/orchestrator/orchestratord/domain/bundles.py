"""Context bundles: what goes in front of a task's input, within a token budget.

Candidates come in fixed tiers, highest priority first:

1. INDEX: the project's INDEX document (conventions, layout, decisions);
2. REQUIRED: outputs of the tasks this task requires (full, or their summary
   when the full text does not fit), each followed by the handoff summary
   from memoryd when the required task was another role's (kind
   ``handoff``, source ``handoff:<task id>``);
3. SIBLING: short notes of other tasks of the same plan (refers links
   included);
4. MEMORY: semantic hits from memoryd;
5. PINNED: items a person pinned with ApproveContext.

:func:`allocate` fills the budget tier by tier, in a deterministic order
inside each tier, so the same candidates give the same bundle, and
:func:`render_prompt` turns a bundle into byte-identical text (the engine's
prefix cache is hit on a rerun). :func:`bundle_hash` names a bundle by its
content, so a bundle used by many runs is stored once.

The prompt (:func:`render_prompt`) is, for used items 1..n::

    <task text>

    Context (ordered by priority):

    [1] <kind> from <source> (<tier, lower-case>): <title>
    <item text>

    [2] ...

    <CONFLICT_RULE>

where :data:`CONFLICT_RULE` is the one line "When the context items
conflict, trust them in this order: outputs of required tasks, then the
project INDEX, then items pinned by a person, then referenced tasks and
other context." Parts are separated by one blank line and there is no
newline after the last one. A title is trimmed and its whitespace runs
(newlines included) become one space; an item without a title has no
": <title>". Texts go in as they are. With no used item the prompt is the
task text, unchanged.

This module is pure: no I/O, no clocks.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

#: The fewest tokens worth truncating a REQUIRED output to; with less left it
#: is dropped, since a few words of it would mislead more than help.
MIN_TRUNCATED_TOKENS = 32

#: The line that opens the context in a prompt.
CONTEXT_HEADING = "Context (ordered by priority):"

#: The last paragraph of a prompt with context: which item wins on conflict.
CONFLICT_RULE = (
    "When the context items conflict, trust them in this order: outputs of required tasks, "
    "then the project INDEX, then items pinned by a person, then referenced tasks and other context."
)


class Tier(enum.IntEnum):
    INDEX = 1
    REQUIRED = 2
    SIBLING = 3
    MEMORY = 4
    PINNED = 5


class Fate(enum.Enum):
    """What the allocator did with a candidate."""

    INCLUDED = "included"
    #: Its summary went in instead of the full text.
    SUMMARISED = "summarised"
    #: Cut to the tokens that were left (only the head is kept).
    TRUNCATED = "truncated"
    DROPPED = "dropped"
    #: A person excluded it (ApproveContext).
    EXCLUDED = "excluded"


@dataclass(frozen=True, slots=True)
class Candidate:
    """One thing that could go into a task's context."""

    tier: Tier
    #: Where it comes from, stable across runs: "index", "task:9",
    #: "memory:<uuid>", "pin:task:4"...
    source: str
    #: What it is: "index", "output", "summary", "sibling", "memory", "pinned".
    kind: str
    #: A short title for the prompt and previews (a task's name).
    title: str
    text: str
    #: A shorter form to use when ``text`` does not fit ("" when none).
    summary: str = ""
    #: Order inside the tier (lower first); ties by source.
    rank: float = 0.0


@dataclass(frozen=True, slots=True)
class BundleItem:
    """A candidate with the allocator's verdict."""

    candidate: Candidate
    fate: Fate
    #: The text that went in ("" for dropped and excluded items).
    text: str
    #: Tokens of ``text`` (of the full text for dropped items).
    tokens: int
    #: Why it was summarised, truncated, dropped or excluded.
    why: str = ""


@dataclass(frozen=True, slots=True)
class TokenCount:
    """How tokens are counted for a bundle."""

    count: Callable[[str], int]
    #: The tokenizer's name ("tokenizer:<model>"), or "estimate" when no
    #: local tokenizer is known (then counts are ceil(chars / 4)).
    name: str
    exact: bool
    #: A cheap lower bound of ``count(text)`` (never more than it), so a run
    #: need not tokenize what cannot fit; None: count everything.
    at_least: Callable[[str], int] | None = None
    #: The longest head of a text within n tokens and its count, in one
    #: pass of the tokenizer; None: a binary search over ``count``.
    head: Callable[[str, int], tuple[str, int]] | None = None


@dataclass(frozen=True, slots=True)
class Bundle:
    budget: int
    counter: str
    exact: bool
    #: Every candidate in prompt order (included, summarised and truncated
    #: first, in tier order), then the ones left out.
    items: tuple[BundleItem, ...]

    @property
    def used(self) -> tuple[BundleItem, ...]:
        """The items that went into the prompt, in order."""
        return tuple(i for i in self.items if i.fate in (Fate.INCLUDED, Fate.SUMMARISED, Fate.TRUNCATED))

    @property
    def tokens(self) -> int:
        return sum(i.tokens for i in self.used)


def allocate(
    candidates: Sequence[Candidate],
    budget: int,
    counter: TokenCount,
    *,
    excludes: frozenset[str] = frozenset(),
    count_left_out: bool = True,
    left_out_tiers: frozenset[Tier] = frozenset(),
    tiers_why: str = "its tier is not in the role's context policy",
) -> Bundle:
    """Fill ``budget`` tokens with ``candidates``, tier by tier.

    Inside a tier, candidates go by (rank, source). An excluded source is
    left out (EXCLUDED). A candidate that fits goes in whole; one that does
    not goes in as its summary when that fits (SUMMARISED), a REQUIRED one is
    truncated to what is left (TRUNCATED) when at least a useful minimum is
    left, and the rest are DROPPED with the number of tokens they needed.
    Deterministic: the same candidates, budget and counter give an equal
    bundle, whatever order the candidates came in.

    In detail, candidates are taken in (tier, rank, source) order (the other
    fields break the remaining ties, so input order never matters), and each
    gets one fate:

    - EXCLUDED when its tier is in ``left_out_tiers`` (a role's context
      policy), why ``tiers_why``;
    - EXCLUDED when its source is in ``excludes`` (every copy of it), why
      "excluded by a person";
    - DROPPED when an earlier candidate had the same source, why
      "duplicate of an earlier item";
    - INCLUDED when its text fits in what is left;
    - SUMMARISED when it has a summary and the summary fits;
    - TRUNCATED when it is REQUIRED and at least :data:`MIN_TRUNCATED_TOKENS`
      are left: the longest head of the text (by characters) whose count
      fits, with nothing appended;
    - DROPPED otherwise, why "needs N tokens, M left" (followed by
      "(its summary needs S)" when it has one).

    ``tokens`` of a dropped or excluded item is the count of its full text,
    and its ``text`` is "". ``items`` lists the used items first, then the
    ones left out, each group in the order above. Every used item's
    ``tokens`` is ``counter.count`` of the text that went in, and their sum
    never exceeds ``budget``.

    With ``count_left_out`` False (a run: nobody reads what was left out)
    and a counter with ``at_least``, a candidate whose lower bound already
    exceeds what is left (its summary's too, and no truncation possible) is
    DROPPED without being tokenized: its ``tokens`` is the bound and its why
    "needs at least N tokens, M left". The used items are the same either
    way, so the bundle's hash is too.

    Raises:
        ValueError: ``budget`` is not positive, or a candidate's rank is NaN
            (it would make the order depend on the input order).
    """
    if budget <= 0:
        raise ValueError(f"a context budget must be positive, got {budget}")
    if any(math.isnan(c.rank) for c in candidates):
        raise ValueError("a candidate's rank is NaN")
    used: list[BundleItem] = []
    left_out: list[BundleItem] = []
    seen: set[str] = set()
    remaining = budget
    at_least = None if count_left_out else counter.at_least
    for cand in sorted(candidates, key=_candidate_order):
        if cand.tier in left_out_tiers:
            tokens = at_least(cand.text) if at_least is not None else counter.count(cand.text)
            left_out.append(BundleItem(cand, Fate.EXCLUDED, "", tokens, tiers_why))
            continue
        if cand.source in excludes or cand.source in seen:
            tokens = at_least(cand.text) if at_least is not None else counter.count(cand.text)
            if cand.source in excludes:
                left_out.append(BundleItem(cand, Fate.EXCLUDED, "", tokens, "excluded by a person"))
            else:
                left_out.append(BundleItem(cand, Fate.DROPPED, "", tokens, "duplicate of an earlier item"))
            continue
        seen.add(cand.source)
        if at_least is not None:
            bound = at_least(cand.text)
            if (
                bound > remaining
                and not (cand.tier is Tier.REQUIRED and remaining >= MIN_TRUNCATED_TOKENS)
                and (not cand.summary or at_least(cand.summary) > remaining)
            ):
                why = f"needs at least {bound} tokens, {remaining} left"
                left_out.append(BundleItem(cand, Fate.DROPPED, "", bound, why))
                continue
        need = counter.count(cand.text)
        if need <= remaining:
            used.append(BundleItem(cand, Fate.INCLUDED, cand.text, need))
            remaining -= need
            continue
        summary_need = counter.count(cand.summary) if cand.summary else 0
        if cand.summary and summary_need <= remaining:
            why = f"full text needs {need} tokens, {remaining} left; its summary went in"
            used.append(BundleItem(cand, Fate.SUMMARISED, cand.summary, summary_need, why))
            remaining -= summary_need
            continue
        if cand.tier is Tier.REQUIRED and remaining >= MIN_TRUNCATED_TOKENS:
            if counter.head is not None:
                head, head_tokens = counter.head(cand.text, remaining)
            else:
                head, head_tokens = _longest_head(cand.text, remaining, counter.count)
            if head:
                why = (
                    f"full text needs {need} tokens, {remaining} left; "
                    f"kept the first {len(head)} of {len(cand.text)} characters"
                )
                used.append(BundleItem(cand, Fate.TRUNCATED, head, head_tokens, why))
                remaining -= head_tokens
                continue
        why = f"needs {need} tokens, {remaining} left"
        if cand.summary:
            why += f" (its summary needs {summary_need})"
        left_out.append(BundleItem(cand, Fate.DROPPED, "", need, why))
    return Bundle(budget=budget, counter=counter.name, exact=counter.exact, items=(*used, *left_out))


def _candidate_order(c: Candidate) -> tuple[int, float, str, str, str, str, str]:
    # Beyond (tier, rank, source) the rest of the fields make the order
    # total, so which of two same-source candidates counts as "earlier"
    # never depends on the input order.
    return (c.tier, c.rank, c.source, c.kind, c.title, c.text, c.summary)


def _longest_head(text: str, limit: int, count: Callable[[str], int]) -> tuple[str, int]:
    """The longest ``text[:n]`` with ``count(text[:n]) <= limit`` and its
    count, by binary search on ``n`` (("", 0) when no non-empty head fits).
    Assumes the whole text does not fit. A real tokenizer's count is only
    roughly monotone in ``n``; the head returned was measured, so it fits
    whatever the tokenizer does, even if a slightly longer one would too."""
    # Invariant: text[:lo] fits (or lo == 0), text[:hi] does not.
    lo, lo_tokens, hi = 0, 0, len(text)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        tokens = count(text[:mid])
        if tokens <= limit:
            lo, lo_tokens = mid, tokens
        else:
            hi = mid
    return text[:lo], lo_tokens


def render_prompt(task_text: str, bundle: Bundle) -> str:
    """The prompt for a task: the task, then "Context (ordered by priority)"
    with each used item's source and kind, then the instructions that say
    which source wins on conflict (requires > index > manual > refers).
    With an empty bundle the prompt is the task text alone.

    The exact form is in the module docstring; nothing in it depends on
    anything but ``task_text`` and the used items, so equal inputs give
    byte-identical prompts."""
    used = bundle.used
    if not used:
        return task_text
    blocks = [_render_item(n, item) for n, item in enumerate(used, start=1)]
    return f"{task_text}\n\n{CONTEXT_HEADING}\n\n" + "\n\n".join(blocks) + f"\n\n{CONFLICT_RULE}"


def _render_item(number: int, item: BundleItem) -> str:
    cand = item.candidate
    header = f"[{number}] {cand.kind} from {cand.source} ({cand.tier.name.lower()})"
    # A title is one line of the header; a newline in it would read as text.
    title = " ".join(cand.title.split())
    if title:
        header += f": {title}"
    return f"{header}\n{item.text}"


def bundle_hash(bundle: Bundle) -> str:
    """The bundle's content hash: sha256 (hex) of a canonical JSON form of
    its used items (source, kind, tier, text) and counter, so equal context
    gives an equal hash however it was assembled.

    The form is ``{"counter": name, "items": [{"source", "kind", "tier"
    (lower-case name), "text"}, ...]}`` in prompt order, dumped with sorted
    keys, no spaces and UTF-8 as is. The budget, titles, ranks and the items
    left out are not part of it: two bundles that put the same text in front
    of the model are the same context."""
    canonical = {
        "counter": bundle.counter,
        "items": [
            {
                "source": i.candidate.source,
                "kind": i.candidate.kind,
                "tier": i.candidate.tier.name.lower(),
                "text": i.text,
            }
            for i in bundle.used
        ],
    }
    data = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(data.encode("utf-8")).hexdigest()


def bundle_to_json(bundle: Bundle) -> list[dict[str, object]]:
    """Every item of the bundle, in order, as the JSON objects a
    :class:`~orchestratord.domain.tasks.ContextSnapshot` stores:
    ``{source, tier (lower-case name), kind, title, fate (its value),
    tokens, why, text}`` (``text`` is what went in, "" for items left out)."""
    return [
        {
            "source": i.candidate.source,
            "tier": i.candidate.tier.name.lower(),
            "kind": i.candidate.kind,
            "title": i.candidate.title,
            "fate": i.fate.value,
            "tokens": i.tokens,
            "why": i.why,
            "text": i.text,
        }
        for i in bundle.items
    ]


def estimate_tokens(text: str) -> int:
    """ceil(len(text) / 4): the count used when no tokenizer is known."""
    return -(-len(text) // 4)


def estimate_counter() -> TokenCount:
    """The counter for when no local tokenizer is known: ceil(chars / 4),
    named "estimate", not exact."""
    return TokenCount(count=estimate_tokens, name="estimate", exact=False, at_least=estimate_tokens)
