"""`creditctl tenants` and `keys` with the stack down, on the embedded Postgres of a fresh data directory:
a tenant is created once (a second `create` refuses and mints nothing), keys print JSON only when asked,
`keys list` is the one aligned table, a rotated key keeps its lifetime, and no command leaves the
Postgres it had to start running."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from service_runtime.embedded_postgres import EmbeddedPostgres, free_port
from tests.creditctl.test_user_mistakes import creditctl, one_line


@pytest.fixture
def data_dir_env() -> Iterator[dict[str, str]]:
    # Not under pytest's tmp root: another pytest session on the machine resets that root to mode 0700,
    # and the embedded Postgres runs as its own user (as root), who must traverse the path.
    with tempfile.TemporaryDirectory(prefix="credits-cli-") as tmp:
        yield {"CREDITS_DATA_DIR": str(Path(tmp) / "data"), "CREDITS_EMBEDDED_PG_PORT": str(free_port()),
               "NO_COLOR": "1"}


def _postgres_running(env: dict[str, str]) -> bool:
    server = EmbeddedPostgres(Path(env["CREDITS_DATA_DIR"]) / "postgres", int(env["CREDITS_EMBEDDED_PG_PORT"]))
    return server.is_running()


async def _keys(env: dict[str, str]) -> list[dict[str, str]]:
    code, out, err = await creditctl("keys", "list", "--tenant", "acme", "--json", **env)
    assert code == 0, err
    keys: list[dict[str, str]] = json.loads(out)
    return keys


async def test_tenants_and_keys_with_the_stack_down(data_dir_env: dict[str, str]) -> None:
    env = data_dir_env
    code, out, err = await creditctl("tenants", "create", "acme", **env)
    assert code == 0, err
    assert "created" in out and "ck_" in out
    assert not _postgres_running(env)  # started for the command, stopped after it

    code, out, err = await creditctl("tenants", "create", "acme", **env)
    line = one_line(err)
    assert code == 1 and out == "" and line.startswith("ALREADY_EXISTS: tenant_id: ") and "acme" in line
    assert len(await _keys(env)) == 1  # no second admin key

    code, out, err = await creditctl("keys", "create", "acme", "--owner", "ops@acme.example", "--expires-in", "30d",
                                     **env)
    assert code == 0, err
    assert not out.lstrip().startswith("{") and "ck_" in out and "expires" in out  # text, not JSON
    code, out, err = await creditctl("keys", "create", "acme", "--owner", "ops@acme.example", "--json", **env)
    assert code == 0 and json.loads(out)["expires_at"] is None

    listed = await _keys(env)
    expiring = next(k for k in listed if k["expires_at"])
    code, out, err = await creditctl("keys", "rotate", expiring["key_id"], "--json", **env)
    assert code == 0, err
    new_id = json.loads(out)["key_id"]
    new = next(k for k in await _keys(env) if k["key_id"] == new_id)
    lifetime = datetime.fromisoformat(new["expires_at"]) - datetime.fromisoformat(new["created_at"])
    assert abs(lifetime - timedelta(days=30)) < timedelta(minutes=1)  # the replacement keeps the expiry rule

    code, out, err = await creditctl("keys", "list", **env)
    assert code == 0, err
    header, rule, *rows = out.rstrip("\n").splitlines()
    assert len(rows) == 4 and set(rule) <= {"-", " "}
    starts = [i for i, c in enumerate(rule) if c == "-" and (i == 0 or rule[i - 1] == " ")]
    for row in (header, *rows):  # every column starts where its header does
        assert all(row[i - 2:i] == "  " for i in starts[1:] if len(row) > i), row
    assert [row.split()[0] for row in rows] == [k["key_id"] for k in await _keys(env)]
    assert not _postgres_running(env)
