"""OpenTelemetry traces that follow one request across processes: front door → Temporal → worker →
ledger and invoice services.

Off by default: nothing is created, exported or propagated until `configure()` (from the
environment, at process start) or `install()` (tests) turns it on, so the hot path pays one
module-attribute check per RPC.

  CREDITS_OTLP_ENDPOINT=http://collector:4317   export spans with the OTLP gRPC exporter
                                                 (the `otlp` extra: opentelemetry-exporter-otlp-proto-grpc)
  CREDITS_TRACE_EXPORTER=otlp|console|none       pick the exporter explicitly (console: one JSON span per
                                                 line on stdout, for debugging); default: otlp when an
                                                 endpoint is set, otherwise none
  CREDITS_SERVICE_NAME                           the `service.name` resource attribute (each entry point
                                                 passes its own default)

Propagation is W3C trace context (`traceparent` / `tracestate`) in gRPC metadata:

- servers: the shared call guard (service_runtime.call_guard, `observe_start`) extracts it and runs each RPC
  in a SERVER span named after the full method, with `rpc.service`, `rpc.method`,
  `rpc.grpc.status_code`, `credits.code`, `credits.tenant` and `credits.request_id`;
- clients: channels built with `client_interceptors()` run each call in a CLIENT span and inject
  its context; code that cannot add an interceptor to its channel adds `outgoing_metadata()`;
- Temporal: `temporal_interceptor()` (temporalio.contrib.opentelemetry.TracingInterceptor) carries
  the context from the client that starts a workflow into the workflow and its activities.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from temporalio.client import Client

log = logging.getLogger(__name__)

ACTIVE = False  # read on every RPC: keep it a plain module attribute
_tracer: trace.Tracer = trace.NoOpTracer()
_provider: TracerProvider | None = None
_PROPAGATOR = TraceContextTextMapPropagator()
_TRACE_HEADERS = frozenset({"traceparent", "tracestate"})
INSTRUMENTATION = "credits"


def active() -> bool:
    return ACTIVE


def tracer() -> trace.Tracer:
    return _tracer


def install(provider: TracerProvider) -> None:
    """Turns tracing on in this process with `provider` (the global provider is left alone)."""
    global ACTIVE, _tracer, _provider
    _provider = provider
    _tracer = provider.get_tracer(INSTRUMENTATION)
    ACTIVE = True


def uninstall() -> None:
    """Turns tracing off again (tests); spans already started still end normally."""
    global ACTIVE, _tracer, _provider
    ACTIVE = False
    _tracer = trace.NoOpTracer()
    _provider = None


def exporter_from_env() -> SpanExporter | None:
    """The exporter the environment asks for, or None (tracing stays off)."""
    from service_runtime.settings import Settings

    settings = Settings.from_env()  # CREDITS_OTLP_ENDPOINT, CREDITS_TRACE_EXPORTER
    endpoint = settings.otlp_endpoint
    kind = settings.trace_exporter or ("otlp" if endpoint else "none")
    if kind in {"", "none", "off"}:
        return None
    if kind == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter(formatter=lambda span: span.to_json(indent=None) + "\n")
    if kind == "otlp":
        if not endpoint:
            raise SystemExit("CREDITS_TRACE_EXPORTER=otlp needs CREDITS_OTLP_ENDPOINT")
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError as err:
            raise SystemExit("CREDITS_OTLP_ENDPOINT is set but the OTLP exporter is not installed: "
                             "pip install 'credits-engine[otlp]'") from err
        return OTLPSpanExporter(endpoint=endpoint, insecure=endpoint.startswith("http://"))
    raise SystemExit(f"CREDITS_TRACE_EXPORTER must be otlp, console or none, not {kind!r}")


def configure(service_name: str) -> bool:
    """Turns tracing on from the environment (see the module docstring); returns whether it is on.

    Idempotent: the first call in a process decides (`create_server` calls it for every server, so
    every entry point honours the settings). Spans are batched and exported off the request path; the
    provider also becomes the global one, so libraries using the OpenTelemetry API report into it.
    """
    if ACTIVE:
        return True
    exporter = exporter_from_env()
    if exporter is None:
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from service_runtime.settings import Settings

    name = Settings.from_env().service_name or service_name  # CREDITS_SERVICE_NAME
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    install(provider)
    log.info("tracing on: service %s, exporter %s", name, type(exporter).__name__)
    return True


def service_name_of(full_service: str) -> str:
    """credits.ledger.v1.LedgerService -> credits-ledger."""
    parts = full_service.split(".")
    return "-".join(parts[:2]) if len(parts) > 2 else full_service


def shutdown() -> None:
    """Flushes spans still batched (call at process exit)."""
    if _provider is not None:
        _provider.shutdown()


# ---- gRPC servers -----------------------------------------------------------------------------------


class _MetadataGetter(Getter[list[tuple[str, Any]]]):
    """Reads a carrier of gRPC metadata pairs (keys are lower-case on the wire)."""

    def get(self, carrier: list[tuple[str, Any]], key: str) -> list[str] | None:
        values = [v for k, v in carrier if k == key and isinstance(v, str)]
        return values or None

    def keys(self, carrier: list[tuple[str, Any]]) -> list[str]:
        return [k for k, _ in carrier]


_GETTER = _MetadataGetter()


def _split(full_method: str) -> tuple[str, str]:
    service, _, method = full_method.lstrip("/").partition("/")
    return service, method


def start_server_span(full_method: str, metadata: Iterable[tuple[str, Any]] | None) -> tuple[trace.Span, object]:
    """A SERVER span for one RPC, child of the caller's context when its metadata carries one, made
    current; returns it with the token `end_server_span` needs to restore the previous context."""
    carrier = [(k, v) for k, v in metadata or () if k in _TRACE_HEADERS]
    parent = _PROPAGATOR.extract(carrier, getter=_GETTER) if carrier else otel_context.Context()
    service, method = _split(full_method)
    span = _tracer.start_span(full_method.lstrip("/"), parent, kind=SpanKind.SERVER,
                              attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method})
    token = otel_context.attach(trace.set_span_in_context(span, parent))
    return span, token


def end_server_span(span: trace.Span, token: object, code: str, tenant: str, request_id: str | None,
                    detail: str = "") -> None:
    try:
        _finish(span, code, detail)
        if tenant:
            span.set_attribute("credits.tenant", tenant)
        if request_id:
            span.set_attribute("credits.request_id", request_id)
        span.end()
    finally:
        otel_context.detach(token)  # type: ignore[arg-type]


def _finish(span: trace.Span, code: str, detail: str = "") -> None:
    status = getattr(grpc.StatusCode, code, grpc.StatusCode.UNKNOWN)
    span.set_attribute("rpc.grpc.status_code", status.value[0])
    span.set_attribute("credits.code", code)
    if code != "OK":
        span.set_status(Status(StatusCode.ERROR, f"{code}: {detail}"[:500] if detail else code))


# ---- gRPC clients -----------------------------------------------------------------------------------


def outgoing_metadata() -> list[tuple[str, str]]:
    """`traceparent`/`tracestate` for the current span, to add to a call's metadata ([] when off)."""
    if not ACTIVE:
        return []
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return list(carrier.items())


class _TracingClientInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """Runs each unary call in a CLIENT span and sends its context in the metadata."""

    async def intercept_unary_unary(self, continuation: Callable[[Any, Any], Awaitable[Any]],
                                    client_call_details: grpc.aio.ClientCallDetails, request: Any) -> Any:
        if not ACTIVE:
            return await continuation(client_call_details, request)
        raw = client_call_details.method
        full_method = (raw.decode() if isinstance(raw, bytes) else str(raw)).lstrip("/")
        service, method = _split(full_method)
        with _tracer.start_as_current_span(full_method, kind=SpanKind.CLIENT, record_exception=False,
                                           set_status_on_exception=False,
                                           attributes={"rpc.system": "grpc", "rpc.service": service,
                                                       "rpc.method": method}) as span:
            metadata = grpc.aio.Metadata(*(client_call_details.metadata or ()))
            for key, value in outgoing_metadata():
                metadata.add(key, value)
            details = client_call_details._replace(metadata=metadata)
            call = await continuation(details, request)
            try:
                await call
            except grpc.aio.AioRpcError as err:
                _finish(span, err.code().name, err.details() or "")
            except BaseException:
                _finish(span, "CANCELLED")
                raise
            else:
                _finish(span, "OK")
            return call


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """Interceptors for a channel to a service: [] when tracing is off (the channel pays nothing)."""
    return [_TracingClientInterceptor()] if ACTIVE else []


# ---- Temporal ---------------------------------------------------------------------------------------


def temporal_interceptor() -> Any:
    """A TracingInterceptor (client and worker) reporting to this module's tracer."""
    from temporalio.contrib.opentelemetry import TracingInterceptor

    return TracingInterceptor(_tracer)


def has_temporal_interceptor(client: Client) -> bool:
    from temporalio.contrib.opentelemetry import TracingInterceptor

    return any(isinstance(i, TracingInterceptor) for i in client.config().get("interceptors", ()))


def traced_client(client: Client) -> Client:
    """`client` with a TracingInterceptor (sharing its connection) when tracing is on; else `client`."""
    if not ACTIVE or has_temporal_interceptor(client):
        return client
    from temporalio.client import Client as TemporalClient

    config = client.config()
    config["interceptors"] = [*config.get("interceptors", ()), temporal_interceptor()]
    return TemporalClient(**config)
