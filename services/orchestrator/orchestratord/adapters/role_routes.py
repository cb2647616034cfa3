"""Where each role's jobs would run now: the router's dry-run Route
(:class:`orchestratord.domain.ports.RoleRoutes`), for ``hearth roles``.

A dry run counts nothing against rate limits and reserves no budget; only
facts are sent (the role and token counts), never a prompt."""

from __future__ import annotations

import grpc

from hearth.api.router.v1 import router_pb2, router_pb2_grpc
from hearth.errors import from_rpc_error
from orchestratord.domain.ports import RoleRoute

#: The longest a dry run may take before the role is shown without a route.
_TIMEOUT = 5.0


class GrpcRoleRoutes:
    """RoleRoutes over routerd's RouterService."""

    def __init__(self, channel: grpc.aio.Channel, *, timeout: float = _TIMEOUT) -> None:
        self._stub = router_pb2_grpc.RouterServiceStub(channel)
        self._timeout = timeout

    async def route(self, role: str, prompt_tokens: int, max_tokens: int) -> RoleRoute:
        request = router_pb2.RouteRequest(
            role=role, prompt_tokens=prompt_tokens, max_tokens=max_tokens, dry_run=True
        )
        try:
            reply = await self._stub.Route(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as err:
            error = from_rpc_error(err)
            return RoleRoute(error_reason=error.reason, error_message=error.message)
        report = reply.report
        chosen = next((c for c in report.candidates if c.selected), None)
        return RoleRoute(
            chain=tuple(reply.chain),
            chosen=report.chosen_target or (reply.chain[0] if reply.chain else ""),
            reason=chosen.reason if chosen is not None else "",
            detail=chosen.detail if chosen is not None else "",
            matched_rules=tuple(report.matched_rules),
        )
