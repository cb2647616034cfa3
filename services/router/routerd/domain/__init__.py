"""The pure routing decision: no grpc, nats or clocks."""

from routerd.domain.routing import (
    REPORT_SCHEMA_VERSION,
    CandidateReason,
    CatalogModel,
    ModelCatalog,
    RouteCandidate,
    RouteDecision,
    RouteFacts,
    RoutingReport,
    route,
)

__all__ = [
    "REPORT_SCHEMA_VERSION",
    "CandidateReason",
    "CatalogModel",
    "ModelCatalog",
    "RouteCandidate",
    "RouteDecision",
    "RouteFacts",
    "RoutingReport",
    "route",
]
