"""The error interceptor: our exceptions become google.rpc.Status with an
ErrorInfo; anything unexpected becomes INTERNAL with a generic text."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from hearth.errors import HearthError, Internal

log = logging.getLogger(__name__)


async def _abort(context: grpc.aio.ServicerContext, method: str, err: BaseException) -> None:
    if not isinstance(err, HearthError):
        log.exception("unexpected error in %s", method, exc_info=err)
        err = Internal("internal error; see the service log")
    await context.abort(err.code, err.message, trailing_metadata=err.trailing_metadata())


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method
        if handler.unary_unary:
            inner = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    return await inner(request, context)
                except (asyncio.CancelledError, grpc.aio.AbortError):
                    raise
                except Exception as err:
                    await _abort(context, method, err)

            return grpc.unary_unary_rpc_method_handler(
                unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream:
            inner_stream = handler.unary_stream

            async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    async for item in inner_stream(request, context):
                        yield item
                except (asyncio.CancelledError, grpc.aio.AbortError):
                    raise
                except Exception as err:
                    await _abort(context, method, err)

            return grpc.unary_stream_rpc_method_handler(
                stream, handler.request_deserializer, handler.response_serializer
            )
        return handler
