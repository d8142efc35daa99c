"""Shared fixtures: an embedded Postgres per test process, and the spans a test's traces record."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from service_runtime import tracing
from tests import postgres_fixtures

warnings.filterwarnings("ignore", module="platformdirs")


@pytest.fixture(scope="session", autouse=True)
def _embedded_postgres() -> Iterator[None]:
    yield
    postgres_fixtures.stop_server()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Spans recorded in memory while the test runs (tracing installed, then uninstalled)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        yield exporter
    finally:
        tracing.uninstall()
        provider.shutdown()
