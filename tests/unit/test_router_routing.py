"""route(): every rule, the report it writes, and its errors."""

from __future__ import annotations

import pytest

from hearth.errors import InvalidArgument, NotFound
from routerd.domain.routing import (
    REPORT_SCHEMA_VERSION,
    CandidateReason,
    CatalogModel,
    ModelCatalog,
    RouteFacts,
    route,
)

pytestmark = pytest.mark.unit

SMALL = CatalogModel("small", 4096, ("default", "writer"), "transformers")
CODER = CatalogModel("coder", 16384, ("coder",), "vllm")
CODER_LITE = CatalogModel("coder-lite", 2048, ("coder",), "vllm")
BIG = CatalogModel("big", 32768, ("default", "researcher"), "openai")

CATALOG = ModelCatalog.of([SMALL, CODER, CODER_LITE, BIG])


def reasons(decision_candidates: object) -> dict[str, tuple[bool, CandidateReason]]:
    return {c.target: (c.selected, c.reason) for c in decision_candidates}  # type: ignore[attr-defined]


def test_a_named_model_is_the_only_target() -> None:
    decision = route(RouteFacts(job_id="j", model="coder", role="writer"), CATALOG)
    assert decision.chain == ("coder",)
    report = decision.report
    assert report.chosen_target == "coder"
    assert report.matched_rules == ("requested_model",)
    assert reasons(report.candidates) == {
        "coder": (True, CandidateReason.REQUESTED_MODEL),
        "small": (False, CandidateReason.NOT_REQUESTED),
        "coder-lite": (False, CandidateReason.NOT_REQUESTED),
        "big": (False, CandidateReason.NOT_REQUESTED),
    }
    assert [c.target for c in report.candidates] == ["small", "coder", "coder-lite", "big"]


def test_an_unknown_named_model_is_model_not_found() -> None:
    with pytest.raises(NotFound) as missing:
        route(RouteFacts(model="gpt-9"), CATALOG)
    assert missing.value.reason == "MODEL_NOT_FOUND"
    assert missing.value.metadata == {"model": "gpt-9"}


def test_a_role_gets_its_models_in_config_order_then_the_default_roles() -> None:
    decision = route(RouteFacts(role="coder"), CATALOG)
    assert decision.chain == ("coder", "coder-lite", "small", "big")
    report = decision.report
    assert report.chosen_target == "coder"
    assert report.matched_rules == ("role_default:coder", "role_fallback:default")
    assert reasons(report.candidates) == {
        "coder": (True, CandidateReason.ROLE_DEFAULT),
        "coder-lite": (False, CandidateReason.ROLE_FALLBACK),
        "small": (False, CandidateReason.ROLE_FALLBACK),
        "big": (False, CandidateReason.ROLE_FALLBACK),
    }


def test_an_empty_role_is_the_default_role() -> None:
    decision = route(RouteFacts(), CATALOG)
    assert decision.chain == ("small", "big")
    assert decision.report.matched_rules == ("role_default:default",)
    assert reasons(decision.report.candidates)["coder"] == (False, CandidateReason.ROLE_MISMATCH)


def test_a_role_nobody_has_falls_back_to_the_default_role() -> None:
    decision = route(RouteFacts(role="tester"), CATALOG)
    assert decision.chain == ("small", "big")
    assert decision.report.matched_rules == ("role_default:default",)
    assert reasons(decision.report.candidates)["small"] == (True, CandidateReason.ROLE_DEFAULT)


def test_with_no_role_match_at_all_the_first_model_is_chosen() -> None:
    catalog = ModelCatalog.of([CODER, CODER_LITE])
    decision = route(RouteFacts(role="writer"), catalog)
    assert decision.chain == ("coder",)
    assert decision.report.matched_rules == ("first_model",)
    assert reasons(decision.report.candidates) == {
        "coder": (True, CandidateReason.ROLE_DEFAULT),
        "coder-lite": (False, CandidateReason.ROLE_MISMATCH),
    }


def test_the_catalogs_default_role_is_configurable() -> None:
    catalog = ModelCatalog.of([SMALL, CODER], default_role="coder")
    assert route(RouteFacts(), catalog).chain == ("coder",)
    assert route(RouteFacts(role="writer"), catalog).chain == ("small", "coder")


def test_a_context_too_short_is_passed_over() -> None:
    decision = route(RouteFacts(role="coder", prompt_tokens=3000, max_tokens=1500), CATALOG)
    # coder-lite (2048) and small (4096) cannot hold 4500 tokens.
    assert decision.chain == ("coder", "big")
    assert "context_too_long" in decision.report.matched_rules
    lite = next(c for c in decision.report.candidates if c.target == "coder-lite")
    assert (lite.selected, lite.reason) == (False, CandidateReason.CONTEXT_TOO_LONG)
    assert "4500" in lite.detail


def test_the_first_candidate_passed_over_promotes_the_next() -> None:
    catalog = ModelCatalog.of([CODER_LITE, CODER])
    decision = route(RouteFacts(role="coder", prompt_tokens=2000, max_tokens=100), catalog)
    assert decision.chain == ("coder",)
    assert reasons(decision.report.candidates) == {
        "coder-lite": (False, CandidateReason.CONTEXT_TOO_LONG),
        "coder": (True, CandidateReason.ROLE_DEFAULT),
    }


def test_every_candidate_too_short_is_context_too_long() -> None:
    with pytest.raises(InvalidArgument) as too_long:
        route(RouteFacts(role="writer", prompt_tokens=40_000, max_tokens=1000), CATALOG)
    err = too_long.value
    assert err.reason == "CONTEXT_TOO_LONG"
    assert err.field == "spec.max_tokens"
    assert "needs 41000 tokens; the largest context is 32768" in err.message
    assert err.metadata["needed_tokens"] == "41000"


def test_a_named_model_too_short_is_context_too_long() -> None:
    with pytest.raises(InvalidArgument) as too_long:
        route(RouteFacts(model="coder-lite", prompt_tokens=2000, max_tokens=100), CATALOG)
    assert too_long.value.reason == "CONTEXT_TOO_LONG"
    assert "the largest context is 2048" in too_long.value.message


def test_an_empty_catalog_is_model_not_found() -> None:
    empty = ModelCatalog.of([])
    for facts in (RouteFacts(), RouteFacts(model="small")):
        with pytest.raises(NotFound) as missing:
            route(facts, empty)
        assert missing.value.reason == "MODEL_NOT_FOUND"


def test_the_report_names_its_schema_and_the_catalog_version() -> None:
    report = route(RouteFacts(), CATALOG).report
    assert report.schema_version == REPORT_SCHEMA_VERSION == 1
    assert report.policy_version == CATALOG.version
    assert len(CATALOG.version) == 12


def test_the_catalog_version_follows_its_content() -> None:
    same = ModelCatalog.of([SMALL, CODER, CODER_LITE, BIG])
    reordered = ModelCatalog.of([CODER, SMALL, CODER_LITE, BIG])
    other_default = ModelCatalog.of([SMALL, CODER, CODER_LITE, BIG], default_role="coder")
    assert same.version == CATALOG.version
    assert len({CATALOG.version, reordered.version, other_default.version}) == 3


def test_a_catalog_rejects_duplicate_names() -> None:
    with pytest.raises(ValueError, match="listed twice"):
        ModelCatalog.of([SMALL, SMALL])


def test_the_decision_ignores_the_job_id() -> None:
    assert route(RouteFacts(job_id="a", role="coder"), CATALOG) == route(
        RouteFacts(job_id="b", role="coder"), CATALOG
    )
