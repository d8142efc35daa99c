"""Shared fixtures: an embedded Postgres per test process and tenants with API keys."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest

from tests import postgres_fixtures

warnings.filterwarnings("ignore", module="platformdirs")


@pytest.fixture(scope="session", autouse=True)
def _embedded_postgres() -> Iterator[None]:
    yield
    postgres_fixtures.stop_server()
