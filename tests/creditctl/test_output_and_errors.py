"""How creditctl prints: plain aligned text off a terminal, rich tables on one (colour unless NO_COLOR),
--csv and -q forms; and the one line a refused call becomes."""

from __future__ import annotations

import csv
import io

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from creditctl import errors, output
from creditctl.output import Format, emit_record, emit_rows

ROWS = [{"lot_id": "lot_1", "amount": "30.00", "scope": {"kinds": ["USAGE"]}},
        {"lot_id": "lot_22", "amount": "5.00", "scope": {}}]


def test_off_a_terminal_tables_are_plain_and_aligned(capsys: pytest.CaptureFixture[str]) -> None:
    emit_rows(ROWS, ("lot_id", "amount"), Format.TABLE)
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["lot_id  amount", "------  ------", "lot_1   30.00", "lot_22  5.00"]


def test_csv_json_and_quiet(capsys: pytest.CaptureFixture[str]) -> None:
    emit_rows(ROWS, ("lot_id", "amount", "scope"), Format.CSV)
    parsed = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert parsed[0] == {"lot_id": "lot_1", "amount": "30.00", "scope": '{"kinds":["USAGE"]}'}
    emit_rows(ROWS, ("lot_id", "amount"), Format.QUIET)
    assert capsys.readouterr().out.split() == ["lot_1", "lot_22"]
    emit_record(ROWS[0], Format.QUIET, id_field="lot_id")
    assert capsys.readouterr().out == "lot_1\n"
    emit_record(ROWS[1], Format.TABLE)
    assert capsys.readouterr().out.splitlines() == ["lot_id  lot_22", "amount  5.00"]  # empty fields left out


@pytest.mark.parametrize("no_color", [False, True])
def test_at_a_terminal_a_rich_table_with_colour_unless_no_color(monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str],
                                                                no_color: bool) -> None:
    monkeypatch.setattr(output, "is_terminal", lambda: True)
    monkeypatch.setenv("FORCE_COLOR", "1")  # capsys is no terminal; make rich render as for one
    if no_color:
        monkeypatch.setenv("NO_COLOR", "1")
    else:
        monkeypatch.delenv("NO_COLOR", raising=False)
    emit_rows(ROWS, ("lot_id", "amount"), Format.TABLE)
    out = capsys.readouterr().out
    assert "lot_22" in out and "─" in out  # rich's rule under the header
    assert ("36m" in out) is not no_color  # cyan headers (SGR 36), unless NO_COLOR


def _error(code: grpc.StatusCode, details: str, retry_s: float | None = None) -> grpc.aio.AioRpcError:
    trailing = grpc.aio.Metadata()
    if retry_s is not None:
        status = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message=details)
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(
            seconds=int(retry_s), nanos=int(retry_s % 1 * 1e9))))
        trailing.add("grpc-status-details-bin", status.SerializeToString())
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details=details)


def test_a_refusal_is_one_line_with_status_and_field() -> None:
    line = errors.rpc_line(_error(grpc.StatusCode.INVALID_ARGUMENT, "charges[0].amount: has more\n than 2 decimals"))
    assert line == "INVALID_ARGUMENT: charges[0].amount: has more than 2 decimals"
    assert errors.rpc_line(_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "over the key's rate limit", 1.5)) == \
        "RESOURCE_EXHAUSTED: over the key's rate limit (retry in 1.5 s)"
    assert "CREDITS_API_KEY" in errors.rpc_line(_error(grpc.StatusCode.UNAUTHENTICATED, "unknown API key"))
    unreachable = errors.rpc_line(_error(grpc.StatusCode.UNAVAILABLE, "failed to connect"),
                                  "ledger at 127.0.0.1:1 (CREDITS_LEDGER_ADDR)")
    assert unreachable.startswith("UNAVAILABLE: failed to connect — ledger at 127.0.0.1:1 (CREDITS_LEDGER_ADDR)")


def test_a_lost_reply_names_the_generated_key_to_retry_with(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(errors, "_generated_key", [])
    from creditctl.records import key_for

    assert key_for("mine") == "mine" and "--idempotency-key" not in errors.rpc_line(
        _error(grpc.StatusCode.UNAVAILABLE, "x"))
    key = key_for("")
    assert errors.rpc_line(_error(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline")).endswith(
        f"retry safely with --idempotency-key {key}")
    assert key not in errors.rpc_line(_error(grpc.StatusCode.NOT_FOUND, "account_id: not found"))


def test_version_completion_and_help_sections() -> None:
    from click.testing import CliRunner

    from creditctl.main import cli

    runner = CliRunner()
    assert runner.invoke(cli, ["--version"]).output.startswith("creditctl ")
    script = runner.invoke(cli, ["completion", "bash"])
    assert script.exit_code == 0 and "_CREDITCTL_COMPLETE" in script.output
    completed = runner.invoke(cli, [], prog_name="creditctl", env={"_CREDITCTL_COMPLETE": "bash_complete",
                                                                   "COMP_WORDS": "creditctl acc", "COMP_CWORD": "1"})
    assert completed.output.split() == ["plain,accounts"]
    helped = runner.invoke(cli, ["--help"]).output
    assert helped.index("Start:") < helped.index("Credits (ledger):") < helped.index("Billing (")
    assert "[default: USD]" in runner.invoke(cli, ["grants", "create", "--help"]).output
    assert '[default: ""]' not in runner.invoke(cli, ["grants", "create", "--help"]).output


def test_chaos_and_ingest_help_name_the_json_keys_they_print() -> None:
    """Issue #21: `--help` names the keys `--json` prints (faults planned/applied by kind, events stored), and
    every key it names is one the command's result really has."""
    import dataclasses

    from click.testing import CliRunner

    from creditctl.main import cli
    from harness.benches.ingest import IngestBench
    from harness.chaos.campaign import CampaignResult

    runner = CliRunner()
    chaos_help = " ".join(runner.invoke(cli, ["chaos", "--help"]).output.split())
    chaos_keys = set(CampaignResult(1, 1, {}, {}, [], {}, [], 0.0).as_dict())
    for key in ("faults_planned", "faults_applied", "faults_total", "faults_not_applied", "bank_reads", "traffic"):
        assert key in chaos_help and key in chaos_keys, key
    ingest_help = " ".join(runner.invoke(cli, ["bench", "ingest", "--help"]).output.split())
    ingest_keys = {f.name for f in dataclasses.fields(IngestBench)}
    for key in ("events", "events_stored", "baseline_events_stored", "events_per_s", "ratio_vs_baseline"):
        assert key in ingest_help and key in ingest_keys, key
