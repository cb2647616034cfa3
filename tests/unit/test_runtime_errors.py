"""Errors cross the wire as google.rpc.Status and come back as the same type."""

from __future__ import annotations

import grpc
import pytest

from hearth.api.router.v1 import router_pb2, router_pb2_grpc
from hearth.errors import (
    HearthError,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    from_rpc_error,
)
from hearth.runtime.interceptors import ErrorInterceptor

pytestmark = pytest.mark.unit


class _Router(router_pb2_grpc.RouterServiceServicer):
    def __init__(self, error: BaseException) -> None:
        self.error = error

    async def Route(self, request, context):
        raise self.error


async def _call(error: BaseException) -> grpc.aio.AioRpcError:
    server = grpc.aio.server(interceptors=[ErrorInterceptor()])
    router_pb2_grpc.add_RouterServiceServicer_to_server(_Router(error), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await router_pb2_grpc.RouterServiceStub(channel).Route(router_pb2.RouteRequest(), timeout=5)
            return caught.value
    finally:
        await server.stop(0)


async def test_invalid_argument_names_the_field() -> None:
    rpc_error = await _call(InvalidArgument("spec.prompt", "must not be empty"))
    assert rpc_error.code() == grpc.StatusCode.INVALID_ARGUMENT
    err = from_rpc_error(rpc_error)
    assert isinstance(err, InvalidArgument)
    assert err.reason == "INVALID_FIELD"
    assert err.field == "spec.prompt"
    assert err.metadata["field"] == "spec.prompt"
    assert "must not be empty" in err.message


async def test_reason_metadata_and_retry_delay_survive() -> None:
    err = from_rpc_error(
        await _call(ResourceExhausted("queue is full", reason="QUEUE_FULL", retry_after=1.5))
    )
    assert isinstance(err, ResourceExhausted)
    assert (err.reason, err.retry_after) == ("QUEUE_FULL", 1.5)

    err = from_rpc_error(
        await _call(NotFound("no such model", reason="MODEL_NOT_FOUND", metadata={"model": "x"}))
    )
    assert isinstance(err, NotFound)
    assert err.reason == "MODEL_NOT_FOUND" and err.metadata == {"model": "x"}


async def test_unexpected_errors_become_generic_internal() -> None:
    rpc_error = await _call(ValueError("secret detail sk-abcdefghijklmnopqrstuv"))
    assert rpc_error.code() == grpc.StatusCode.INTERNAL
    err = from_rpc_error(rpc_error)
    assert isinstance(err, Internal)
    assert "secret detail" not in err.message


def test_status_carries_the_code() -> None:
    status = InvalidArgument("request_id", "must be a UUID").to_status()
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert len(status.details) == 1


def test_plain_rpc_error_without_details_maps_by_code() -> None:
    class Plain(grpc.RpcError):
        def code(self):
            return grpc.StatusCode.UNAVAILABLE

        def details(self):
            return "connection refused"

    err = from_rpc_error(Plain())
    assert isinstance(err, HearthError)
    assert err.reason == "UNAVAILABLE"
