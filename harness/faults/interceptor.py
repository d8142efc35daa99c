"""The gRPC client interceptor through which a fault plan reaches a worker's participant calls.

Installed on the channels a harness worker opens to the ledger and the invoice service
(`WorkerExtensions.channel_interceptors`), after the tracing interceptor: a "before" fault fails or
holds the call before the request leaves the worker, an "after" fault acts once the service has
answered (the work is done; the worker loses or waits on the answer).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from harness.faults.plans import FaultPlan


class FaultInterceptor(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, plan: FaultPlan) -> None:
        self.plan = plan

    async def intercept_unary_unary(self, continuation: Callable[..., Any], client_call_details: Any,
                                    request: Any) -> Any:
        method = client_call_details.method
        method = method.decode() if isinstance(method, bytes) else str(method)
        await self.plan.hit(method, "before")
        call = await continuation(client_call_details, request)
        await call  # the service's own error, if any, stands
        await self.plan.hit(method, "after")
        return call
