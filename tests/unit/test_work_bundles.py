"""Context bundles: allocate() fills a budget tier by tier (whole, summary,
truncated head or dropped, with a reason for each), excludes and duplicates
are left out, and the same candidates in any order give an equal bundle, hash
and byte-identical prompt.

Rendered prompts are compared byte for byte with the golden files in
tests/fixtures/prompts/ (each is the prompt followed by one newline, so
editors leave the end of the file alone). After a deliberate change to the
template, rewrite them with::

    HEARTH_UPDATE_GOLDEN=1 .venv/bin/python -m pytest -q tests/unit/test_work_bundles.py

and review the diff before committing it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestratord.domain.bundles import (
    CONFLICT_RULE,
    MIN_TRUNCATED_TOKENS,
    Bundle,
    BundleItem,
    Candidate,
    Fate,
    Tier,
    TokenCount,
    allocate,
    bundle_hash,
    bundle_to_json,
    estimate_counter,
    estimate_tokens,
    render_prompt,
)

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

GOLDEN_DIR = Path(__file__).parents[1] / "fixtures" / "prompts"
UPDATE_GOLDEN = os.environ.get("HEARTH_UPDATE_GOLDEN") == "1"

#: One token per character: budgets in these tests read as lengths.
CHARS = TokenCount(count=len, name="chars", exact=True)
ESTIMATE = estimate_counter()


def cand(
    tier: Tier,
    source: str,
    text: str,
    *,
    summary: str = "",
    rank: float = 0.0,
    kind: str = "",
    title: str | None = None,
) -> Candidate:
    default_kind = {
        Tier.INDEX: "index",
        Tier.REQUIRED: "output",
        Tier.SIBLING: "sibling",
        Tier.MEMORY: "memory",
        Tier.PINNED: "pinned",
    }[tier]
    return Candidate(
        tier, source, kind or default_kind, source if title is None else title, text, summary, rank
    )


def fates(bundle: Bundle) -> list[tuple[str, Fate]]:
    return [(i.candidate.source, i.fate) for i in bundle.items]


def check_golden(name: str, prompt: str) -> None:
    path = GOLDEN_DIR / name
    expected = (prompt + "\n").encode("utf-8")
    if UPDATE_GOLDEN:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(expected)
    assert path.read_bytes() == expected, f"{name} differs; see the module docstring to update it"


# --- allocation -------------------------------------------------------------


def test_items_go_by_tier_then_rank_then_source_whatever_the_input_order() -> None:
    cands = [
        cand(Tier.PINNED, "pin:task:4", "p"),
        cand(Tier.MEMORY, "memory:b", "m", rank=0.5),
        cand(Tier.MEMORY, "memory:c", "m", rank=0.1),
        cand(Tier.MEMORY, "memory:a", "m", rank=0.5),
        cand(Tier.REQUIRED, "task:9", "r"),
        cand(Tier.REQUIRED, "task:10", "r"),
        cand(Tier.SIBLING, "task:3", "s", rank=-1.0),
        cand(Tier.INDEX, "index", "i"),
    ]
    bundle = allocate(cands, 100, CHARS)
    assert [i.candidate.source for i in bundle.items] == [
        "index",
        "task:10",  # sources compare as text: "task:10" < "task:9"
        "task:9",
        "task:3",
        "memory:c",
        "memory:a",
        "memory:b",
        "pin:task:4",
    ]
    assert all(i.fate is Fate.INCLUDED and i.why == "" for i in bundle.items)
    assert allocate(list(reversed(cands)), 100, CHARS) == bundle


def test_an_item_that_fits_exactly_goes_in_whole() -> None:
    bundle = allocate([cand(Tier.INDEX, "index", "x" * 10)], 10, CHARS)
    (item,) = bundle.items
    assert (item.fate, item.text, item.tokens) == (Fate.INCLUDED, "x" * 10, 10)
    assert bundle.tokens == 10
    assert (bundle.budget, bundle.counter, bundle.exact) == (10, "chars", True)


def test_a_summary_goes_in_when_the_text_does_not_fit() -> None:
    cands = [
        cand(Tier.INDEX, "index", "i" * 30),
        cand(Tier.REQUIRED, "task:9", "t" * 900, summary="s" * 60),
    ]
    bundle = allocate(cands, 150, CHARS)
    index, required = bundle.items
    assert index.fate is Fate.INCLUDED
    assert required == BundleItem(
        cands[1], Fate.SUMMARISED, "s" * 60, 60, "full text needs 900 tokens, 120 left; its summary went in"
    )
    assert bundle.tokens == 90


def test_a_summary_is_used_in_any_tier() -> None:
    memory = cand(Tier.MEMORY, "memory:a", "m" * 50, summary="short")
    (item,) = allocate([memory], 10, CHARS).items
    assert (item.fate, item.text, item.tokens) == (Fate.SUMMARISED, "short", 5)


def test_a_required_output_is_truncated_to_what_is_left() -> None:
    text = "".join(f"line {n}\n" for n in range(100))
    cands = [
        cand(Tier.INDEX, "index", "i" * 60),
        cand(Tier.REQUIRED, "task:9", text),
        cand(Tier.SIBLING, "task:3", "s"),
    ]
    bundle = allocate(cands, 100, CHARS)
    index, required, sibling = bundle.items
    assert index.fate is Fate.INCLUDED
    assert required.fate is Fate.TRUNCATED
    assert required.text == text[:40]
    assert required.tokens == 40
    assert (
        required.why
        == f"full text needs {len(text)} tokens, 40 left; kept the first 40 of {len(text)} characters"
    )
    # Nothing is left for the rest.
    assert (sibling.fate, sibling.why) == (Fate.DROPPED, "needs 1 tokens, 0 left")
    assert bundle.tokens == 100


def test_truncation_keeps_the_longest_head_that_fits_the_counter() -> None:
    text = "abcdefghij" * 50  # 500 chars, 125 estimated tokens
    (item,) = allocate([cand(Tier.REQUIRED, "task:1", text)], 40, ESTIMATE).items
    assert item.fate is Fate.TRUNCATED
    assert item.text == text[:160]
    assert estimate_tokens(item.text) == item.tokens == 40
    assert estimate_tokens(text[:161]) > 40


def test_a_required_output_whose_summary_does_not_fit_is_truncated() -> None:
    text, summary = "t" * 500, "s" * 200
    (item,) = allocate([cand(Tier.REQUIRED, "task:1", text, summary=summary)], 100, CHARS).items
    assert (item.fate, item.text) == (Fate.TRUNCATED, "t" * 100)


def test_too_little_left_to_truncate_to_drops_a_required_output() -> None:
    left = MIN_TRUNCATED_TOKENS - 1
    cands = [cand(Tier.INDEX, "index", "i" * 10), cand(Tier.REQUIRED, "task:9", "t" * 500)]
    _, required = allocate(cands, 10 + left, CHARS).items
    assert (required.fate, required.text, required.tokens) == (Fate.DROPPED, "", 500)
    assert required.why == f"needs 500 tokens, {left} left"
    # With exactly the minimum left it is truncated.
    _, required = allocate(cands, 10 + MIN_TRUNCATED_TOKENS, CHARS).items
    assert (required.fate, required.tokens) == (Fate.TRUNCATED, MIN_TRUNCATED_TOKENS)


def test_other_tiers_are_never_truncated() -> None:
    for tier in (Tier.INDEX, Tier.SIBLING, Tier.MEMORY, Tier.PINNED):
        (item,) = allocate([cand(tier, "x", "t" * 500)], 100, CHARS).items
        assert (item.fate, item.why) == (Fate.DROPPED, "needs 500 tokens, 100 left")


def test_a_drop_says_what_it_needed_and_what_its_summary_needed() -> None:
    cands = [cand(Tier.INDEX, "index", "i" * 90), cand(Tier.MEMORY, "memory:a", "m" * 50, summary="s" * 20)]
    _, memory = allocate(cands, 100, CHARS).items
    assert memory == BundleItem(
        cands[1], Fate.DROPPED, "", 50, "needs 50 tokens, 10 left (its summary needs 20)"
    )


def test_a_dropped_item_does_not_stop_smaller_later_ones() -> None:
    cands = [
        cand(Tier.SIBLING, "task:1", "a" * 80),
        cand(Tier.SIBLING, "task:2", "b" * 30),
        cand(Tier.MEMORY, "memory:a", "c" * 20),
    ]
    bundle = allocate(cands, 100, CHARS)
    assert fates(bundle) == [("task:1", Fate.INCLUDED), ("memory:a", Fate.INCLUDED), ("task:2", Fate.DROPPED)]
    assert bundle.tokens == 100


def test_used_items_come_first_then_the_ones_left_out_each_in_order() -> None:
    cands = [
        cand(Tier.INDEX, "index", "i" * 50),
        cand(Tier.REQUIRED, "task:1", "r" * 60),  # needs 60, 50 left: truncated
        cand(Tier.SIBLING, "task:2", "s" * 5),
        cand(Tier.MEMORY, "memory:a", "m" * 5),
        cand(Tier.PINNED, "pin:task:7", "p" * 5),
    ]
    bundle = allocate(cands, 100, CHARS, excludes=frozenset({"task:2"}))
    assert fates(bundle) == [
        ("index", Fate.INCLUDED),
        ("task:1", Fate.TRUNCATED),
        ("task:2", Fate.EXCLUDED),
        ("memory:a", Fate.DROPPED),
        ("pin:task:7", Fate.DROPPED),
    ]
    assert [i.candidate.source for i in bundle.used] == ["index", "task:1"]


def test_an_excluded_source_is_left_out_and_costs_nothing() -> None:
    cands = [
        cand(Tier.INDEX, "index", "i" * 80),
        cand(Tier.REQUIRED, "task:9", "r" * 20),
        cand(Tier.PINNED, "pin:task:9", "p" * 20),
    ]
    bundle = allocate(cands, 40, CHARS, excludes=frozenset({"index", "memory:gone"}))
    assert fates(bundle) == [
        ("task:9", Fate.INCLUDED),
        ("pin:task:9", Fate.INCLUDED),
        ("index", Fate.EXCLUDED),
    ]
    excluded = bundle.items[-1]
    assert (excluded.text, excluded.tokens, excluded.why) == ("", 80, "excluded by a person")
    assert bundle.tokens == 40


def test_every_copy_of_an_excluded_source_is_excluded() -> None:
    cands = [cand(Tier.MEMORY, "memory:a", "one"), cand(Tier.PINNED, "memory:a", "two")]
    bundle = allocate(cands, 100, CHARS, excludes=frozenset({"memory:a"}))
    assert [i.fate for i in bundle.items] == [Fate.EXCLUDED, Fate.EXCLUDED]


def test_a_duplicate_source_keeps_the_first_in_order() -> None:
    cands = [
        cand(Tier.PINNED, "task:9", "pinned copy"),
        cand(Tier.REQUIRED, "task:9", "required copy", rank=1.0),
        cand(Tier.REQUIRED, "task:9", "another copy", rank=0.0),
    ]
    bundle = allocate(cands, 100, CHARS)
    assert [(i.text, i.fate) for i in bundle.items] == [
        ("another copy", Fate.INCLUDED),
        ("", Fate.DROPPED),
        ("", Fate.DROPPED),
    ]
    assert [i.candidate.text for i in bundle.items] == ["another copy", "required copy", "pinned copy"]
    assert {i.why for i in bundle.items[1:]} == {"duplicate of an earlier item"}
    assert bundle.items[1].tokens == len("required copy")
    # Same-source candidates with equal tier and rank still order the same
    # whatever the input order.
    twins = [cand(Tier.MEMORY, "memory:a", "bbb"), cand(Tier.MEMORY, "memory:a", "aaa")]
    assert allocate(twins, 100, CHARS) == allocate(twins[::-1], 100, CHARS)
    assert allocate(twins, 100, CHARS).used[0].text == "aaa"


def test_a_duplicate_does_not_spend_the_budget() -> None:
    cands = [cand(Tier.REQUIRED, "task:9", "x" * 60), cand(Tier.PINNED, "task:9", "x" * 60)]
    bundle = allocate(cands, 100, CHARS)
    assert bundle.tokens == 60
    assert fates(bundle) == [("task:9", Fate.INCLUDED), ("task:9", Fate.DROPPED)]


def test_no_candidates_give_an_empty_bundle() -> None:
    bundle = allocate([], 10, ESTIMATE)
    assert bundle == Bundle(budget=10, counter="estimate", exact=False, items=())
    assert bundle.tokens == 0


@pytest.mark.parametrize("budget", [0, -1])
def test_a_budget_that_is_not_positive_is_refused(budget: int) -> None:
    with pytest.raises(ValueError, match="budget must be positive"):
        allocate([cand(Tier.INDEX, "index", "x")], budget, CHARS)


def test_a_nan_rank_is_refused() -> None:
    with pytest.raises(ValueError, match="NaN"):
        allocate([cand(Tier.MEMORY, "memory:a", "x", rank=float("nan"))], 10, CHARS)


def test_the_estimate_counter() -> None:
    assert [estimate_tokens("x" * n) for n in (0, 1, 3, 4, 5, 8, 9)] == [0, 1, 1, 1, 2, 2, 3]
    assert (ESTIMATE.name, ESTIMATE.exact) == ("estimate", False)
    assert ESTIMATE.count("héllo") == 2
    assert estimate_counter() == ESTIMATE


# --- hash and JSON ----------------------------------------------------------


def test_the_hash_is_sha256_of_the_canonical_json() -> None:
    cands = [cand(Tier.INDEX, "index", "Ünïcode"), cand(Tier.MEMORY, "memory:a", "m" * 50, summary="sum")]
    bundle = allocate(cands, 20, CHARS)
    canonical = (
        '{"counter":"chars","items":['
        '{"kind":"index","source":"index","text":"Ünïcode","tier":"index"},'
        '{"kind":"memory","source":"memory:a","text":"sum","tier":"memory"}]}'
    )
    assert bundle_hash(bundle) == hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def test_the_hash_follows_the_used_context_only() -> None:
    base = [cand(Tier.INDEX, "index", "i" * 10), cand(Tier.MEMORY, "memory:a", "m" * 10)]
    reference = bundle_hash(allocate(base, 20, CHARS))
    # Another budget, another title, something dropped or excluded: same context.
    assert bundle_hash(allocate(base, 25, CHARS)) == reference
    retitled = [cand(Tier.INDEX, "index", "i" * 10, title="INDEX v2"), base[1]]
    assert bundle_hash(allocate(retitled, 20, CHARS)) == reference
    with_extra = [*base, cand(Tier.PINNED, "pin:x", "p" * 50)]
    assert bundle_hash(allocate(with_extra, 20, CHARS)) == reference
    assert bundle_hash(allocate(with_extra, 100, CHARS, excludes=frozenset({"pin:x"}))) == reference
    # Other text, another counter, another source: another hash.
    edited = [cand(Tier.INDEX, "index", "j" * 10), base[1]]
    assert bundle_hash(allocate(edited, 20, CHARS)) != reference
    words = TokenCount(count=len, name="words", exact=True)
    assert bundle_hash(allocate(base, 20, words)) != reference
    moved = [base[0], cand(Tier.MEMORY, "memory:b", "m" * 10)]
    assert bundle_hash(allocate(moved, 20, CHARS)) != reference


def test_bundle_to_json_lists_every_item_as_stored() -> None:
    cands = [
        cand(Tier.INDEX, "index", "i" * 10, title="INDEX"),
        cand(Tier.MEMORY, "memory:a", "m" * 50, title="a memory"),
    ]
    items = bundle_to_json(allocate(cands, 20, CHARS))
    assert items == [
        {
            "source": "index",
            "tier": "index",
            "kind": "index",
            "title": "INDEX",
            "fate": "included",
            "tokens": 10,
            "why": "",
            "text": "i" * 10,
        },
        {
            "source": "memory:a",
            "tier": "memory",
            "kind": "memory",
            "title": "a memory",
            "fate": "dropped",
            "tokens": 50,
            "why": "needs 50 tokens, 10 left",
            "text": "",
        },
    ]
    assert json.loads(json.dumps(items)) == items


# --- rendering --------------------------------------------------------------

TASK = "Write the retry policy for the dispatcher."
INDEX_TEXT = (
    "# INDEX\n\nLayout: one folder per service under services/.\n"
    "Decisions: gRPC between services; every wait has a deadline."
)
QUEUE_OUTPUT = "The queue is in domain/queue.py. It orders jobs by (priority, created_at)."
TESTS_OUTPUT = "Tests: " + " ".join(f"test_{n} passes;" for n in range(60))


def full_candidates() -> list[Candidate]:
    return [
        cand(Tier.INDEX, "index", INDEX_TEXT, title="Project INDEX"),
        cand(Tier.REQUIRED, "task:7", QUEUE_OUTPUT, title="Write the queue"),
        cand(
            Tier.REQUIRED,
            "task:9",
            TESTS_OUTPUT,
            summary="All 60 queue tests pass.",
            title="Test the\nqueue",
        ),
        cand(
            Tier.SIBLING, "task:11", "Planned: backoff with jitter, capped at 30 s.", title="Design backoff"
        ),
        cand(
            Tier.MEMORY, "memory:5f1c", "Décision: no retries on CONTEXT_TOO_LONG — it never helps.", title=""
        ),
        cand(
            Tier.PINNED,
            "pin:task:4",
            "Retries must be idempotent: reuse the request_id.",
            title="Idempotency",
        ),
    ]


def test_render_full_bundle_golden() -> None:
    bundle = allocate(full_candidates(), 150, ESTIMATE)
    assert fates(bundle) == [
        ("index", Fate.INCLUDED),
        ("task:7", Fate.INCLUDED),
        ("task:9", Fate.SUMMARISED),
        ("task:11", Fate.INCLUDED),
        ("memory:5f1c", Fate.INCLUDED),
        ("pin:task:4", Fate.INCLUDED),
    ]
    prompt = render_prompt(TASK, bundle)
    check_golden("bundle_full.txt", prompt)
    assert prompt.startswith(
        TASK + "\n\nContext (ordered by priority):\n\n[1] index from index (index): Project INDEX\n"
    )
    # The title's newline does not break the header; no title, no colon.
    assert "\n[3] output from task:9 (required): Test the queue\nAll 60 queue tests pass.\n\n" in prompt
    assert "\n[5] memory from memory:5f1c (memory)\nDécision" in prompt
    assert prompt.endswith("reuse the request_id.\n\n" + CONFLICT_RULE)


def test_render_bundle_with_items_left_out_golden() -> None:
    cands = [
        *full_candidates()[:1],
        cand(Tier.REQUIRED, "task:9", TESTS_OUTPUT, title="Test the queue"),
        cand(Tier.SIBLING, "task:11", "Planned: backoff with jitter.", title="Design backoff"),
        cand(Tier.PINNED, "pin:task:4", "Reuse the request_id.", title="Idempotency"),
    ]
    bundle = allocate(cands, 100, ESTIMATE, excludes=frozenset({"pin:task:4"}))
    assert fates(bundle) == [
        ("index", Fate.INCLUDED),
        ("task:9", Fate.TRUNCATED),
        ("task:11", Fate.DROPPED),
        ("pin:task:4", Fate.EXCLUDED),
    ]
    prompt = render_prompt(TASK, bundle)
    check_golden("bundle_dropped.txt", prompt)
    truncated = bundle.items[1].text
    assert f"[2] output from task:9 (required): Test the queue\n{truncated}\n\n{CONFLICT_RULE}" in prompt
    assert "[3]" not in prompt
    assert "backoff" not in prompt and "request_id" not in prompt


def test_render_empty_bundle_golden() -> None:
    # Everything excluded or too big: the prompt is the task alone.
    cands = [cand(Tier.INDEX, "index", "i" * 400), cand(Tier.MEMORY, "memory:a", "m")]
    bundle = allocate(cands, 10, ESTIMATE, excludes=frozenset({"memory:a"}))
    assert bundle.used == ()
    prompt = render_prompt(TASK, bundle)
    assert prompt == TASK
    check_golden("bundle_empty.txt", prompt)


def test_an_empty_bundle_leaves_any_task_text_unchanged() -> None:
    empty = Bundle(budget=10, counter="estimate", exact=False, items=())
    for text in ("", "  padded  \n", "multi\n\nline"):
        assert render_prompt(text, empty) == text


def test_the_conflict_rule_is_the_agreed_text() -> None:
    assert CONFLICT_RULE == (
        "When the context items conflict, trust them in this order: outputs of required tasks, "
        "then the project INDEX, then items pinned by a person, then referenced tasks and other context."
    )
    assert "\n" not in CONFLICT_RULE


# --- determinism ------------------------------------------------------------

SOURCES = ("index", "task:1", "task:2", "task:10", "memory:a", "memory:b", "pin:task:3")


def lumpy_count(text: str) -> int:
    """A counter that is not monotone in the text's length, as a real
    tokenizer's is not quite: the allocator must still stay in budget."""
    return len(text) // 3 + (2 if len(text) % 2 else 0)


COUNTERS = (ESTIMATE, CHARS, TokenCount(count=lumpy_count, name="lumpy", exact=True))

candidates = st.builds(
    Candidate,
    tier=st.sampled_from(Tier),
    source=st.sampled_from(SOURCES),
    kind=st.sampled_from(("index", "output", "summary", "sibling", "memory", "pinned")),
    title=st.text(max_size=12),
    text=st.text(max_size=300),
    summary=st.one_of(st.just(""), st.text(max_size=60)),
    rank=st.one_of(st.sampled_from([0.0, 0.5, 1.0]), st.floats(-5, 5, allow_nan=False)),
)


@settings(max_examples=300, deadline=None)
@given(
    cands=st.lists(candidates, max_size=12),
    budget=st.integers(1, 400),
    counter=st.sampled_from(COUNTERS),
    excludes=st.frozensets(st.sampled_from(SOURCES), max_size=2),
    seed=st.integers(0, 2**32 - 1),
)
def test_the_same_candidates_in_any_order_give_the_same_bundle_hash_and_prompt(
    cands: list[Candidate], budget: int, counter: TokenCount, excludes: frozenset[str], seed: int
) -> None:
    bundle = allocate(cands, budget, counter, excludes=excludes)
    shuffled = cands[:]
    random.Random(seed).shuffle(shuffled)
    again = allocate(shuffled, budget, counter, excludes=excludes)
    assert again == bundle
    assert bundle_hash(again) == bundle_hash(bundle)
    assert render_prompt("task", again).encode() == render_prompt("task", bundle).encode()
    assert bundle_to_json(again) == bundle_to_json(bundle)

    # Within budget, every candidate accounted for once, used items first.
    assert bundle.tokens <= budget
    assert sorted(map(repr, (i.candidate for i in bundle.items))) == sorted(map(repr, cands))
    used = bundle.used
    assert bundle.items[: len(used)] == used
    assert len({i.candidate.source for i in used}) == len(used)
    for item in used:
        assert item.candidate.source not in excludes
        assert item.tokens == counter.count(item.text)
    for item in bundle.items:
        c = item.candidate
        if item.fate is Fate.SUMMARISED:
            assert c.summary and item.text == c.summary
        elif item.fate is Fate.TRUNCATED:
            assert c.tier is Tier.REQUIRED and c.text.startswith(item.text) and item.text != c.text
        elif item.fate is Fate.INCLUDED:
            assert item.text == c.text
        else:
            assert item.text == "" and item.tokens == counter.count(c.text) and item.why
        assert (item.fate is Fate.EXCLUDED) == (c.source in excludes)


def chars_at_least(text: str) -> int:
    return len(text) // 4  # a safe lower bound of both len() and lumpy_count()


BOUNDED = (
    ESTIMATE,
    TokenCount(count=len, name="chars", exact=True, at_least=chars_at_least),
    TokenCount(count=lumpy_count, name="lumpy", exact=True, at_least=lambda t: len(t) // 6),
)


@settings(max_examples=300, deadline=None)
@given(
    cands=st.lists(candidates, max_size=12),
    budget=st.integers(1, 400),
    counter=st.sampled_from(BOUNDED),
    excludes=st.frozensets(st.sampled_from(SOURCES), max_size=2),
)
def test_a_run_that_skips_counting_what_cannot_fit_uses_the_same_items(
    cands: list[Candidate], budget: int, counter: TokenCount, excludes: frozenset[str]
) -> None:
    preview = allocate(cands, budget, counter, excludes=excludes)
    run = allocate(cands, budget, counter, excludes=excludes, count_left_out=False)
    assert run.used == preview.used
    assert bundle_hash(run) == bundle_hash(preview)
    assert render_prompt("task", run) == render_prompt("task", preview)
    assert [i.candidate for i in run.items] == [i.candidate for i in preview.items]
    for lazy, exact in zip(run.items, preview.items, strict=True):
        assert lazy.fate is exact.fate
        assert lazy.tokens <= exact.tokens
        if lazy.tokens < exact.tokens:
            # Counted by the bound: a drop says so; duplicates and excludes keep their why.
            assert lazy.why.startswith("needs at least") or lazy.why == exact.why


def test_a_run_does_not_tokenize_a_candidate_that_cannot_fit() -> None:
    counted: list[str] = []

    def count(text: str) -> int:
        counted.append(text)
        return len(text)

    counter = TokenCount(count=count, name="chars", exact=True, at_least=chars_at_least)
    small = Candidate(Tier.MEMORY, "memory:a", "memory", "a", "x" * 10)
    huge = Candidate(Tier.MEMORY, "memory:b", "memory", "b", "y" * 1000, rank=1)
    bundle = allocate([small, huge], 20, counter, count_left_out=False)
    assert counted == [small.text]
    dropped = bundle.items[-1]
    assert (dropped.fate, dropped.tokens, dropped.why) == (
        Fate.DROPPED,
        250,
        "needs at least 250 tokens, 10 left",
    )
