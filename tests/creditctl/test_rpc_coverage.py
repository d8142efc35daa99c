"""Every RPC a person uses is reachable from creditctl; the ones deliberately left out are listed here, each
with its reason.

The count is a scan of creditctl's source (`rpc_names_called`): an RPC is reachable when a module of
creditctl names it as a call, i.e. as the exact string passed to `rpc(...)` / `paged(...)` /
`call_one(...)` / `getattr(stub, ...)` or as a stub attribute (`stub.GrantCredits(...)`), and every
command module is registered in creditctl.main's COMMANDS. The RPCs come from every
`protos/credits/<area>/v1/*_pb2.py`, so an area added by another branch fails here until its
commands exist (or its RPCs are excluded below, with a reason).

Run it as a script for the table: `python -m tests.creditctl.test_rpc_coverage [CREDITCTL_DIR]`, or for
past commits, counted the same way: `python -m tests.creditctl.test_rpc_coverage --at de7a114 3019837 HEAD`.
"""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CREDITCTL = ROOT / "creditctl"

# Deliberately not commands: who calls them instead, and why a person should not.
EXCLUDED: dict[str, str] = {
    # The saga participant verbs: the coordinator's FinalizeInvoice / VoidInvoice workflows drive them
    # around the ledger hold and record the decision in Temporal; by hand they would skip that record.
    # People finalize and void with `creditctl sagas finalize|void` (the billing front door).
    "credits.invoice.v1.InvoiceService/PrepareFinalize": "saga step (sagas finalize)",
    "credits.invoice.v1.InvoiceService/CommitFinalize": "saga step (sagas finalize)",
    "credits.invoice.v1.InvoiceService/AbortFinalize": "saga step (sagas finalize)",
    "credits.invoice.v1.InvoiceService/PrepareVoid": "saga step (sagas void)",
    "credits.invoice.v1.InvoiceService/CommitVoid": "saga step (sagas void)",
    "credits.invoice.v1.InvoiceService/AbortVoid": "saga step (sagas void)",
    # A saga step too: a recomputation of the draft cut at the lot boundaries, never saved.
    "credits.invoice.v1.InvoiceService/SplitDraft": "saga step (sagas finalize)",
    # Written by the expiry schedule from the invoice service's ListSettlements; by hand it would
    # declare usage final that the invoice service has not finalized (`settlements list|show` read it).
    "credits.ledger.v1.LedgerService/RecordSettlement": "the expiry schedule's step",
    # The deprecated name of ReverseHold (`holds reverse`).
    "credits.ledger.v1.LedgerService/ReverseReference": "deprecated alias of ReverseHold",
    # The gateways' hot path (up to 10,000 debits a call); a person debits one at a time (`holds debit`).
    "credits.ledger.v1.LedgerService/BatchDebitCredits": "gateway API (holds debit does one)",
}


def proto_rpcs(protos: Path = ROOT / "protos") -> dict[str, str]:
    """`package.Service/Method` -> Method, for every service of every committed stub."""
    out: dict[str, str] = {}
    for module_path in sorted((protos / "credits").glob("*/v1/*_pb2.py")):
        name = ".".join(module_path.relative_to(protos).with_suffix("").parts)
        descriptor = importlib.import_module(name).DESCRIPTOR
        for service in descriptor.services_by_name.values():
            for method in service.methods:
                out[f"{service.full_name}/{method.name}"] = method.name
    return out


def rpc_names_called(source: Path = CREDITCTL) -> set[str]:
    """Every name creditctl's code calls as an RPC (see the module docstring)."""
    names: set[str] = set()
    for path in sorted(source.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                func = node.func
                if isinstance(func, ast.Attribute):
                    names.add(func.attr)
                callee = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
                if callee in {"rpc", "paged", "call_one", "getattr", "request_operation", "_one"}:
                    names.update(a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str))
    return names


def reachable(source: Path = CREDITCTL) -> dict[str, bool]:
    called = rpc_names_called(source)
    return {full: method in called for full, method in proto_rpcs().items()}


def test_every_rpc_a_person_uses_has_a_command() -> None:
    found = reachable()
    missing = sorted(full for full, ok in found.items() if not ok and full not in EXCLUDED)
    assert not missing, f"RPCs with no creditctl command (add one, or exclude it with a reason): {missing}"


def test_the_exclusions_are_real_and_not_called() -> None:
    found = reachable()
    stale = sorted(full for full in EXCLUDED if full not in found)
    assert not stale, f"excluded RPCs that no proto has any more: {stale}"
    called = sorted(full for full in EXCLUDED if found[full])
    assert not called, f"excluded RPCs that creditctl calls after all (drop them from EXCLUDED): {called}"


def test_every_command_module_is_registered() -> None:
    from creditctl.main import COMMANDS

    registered = {m.__name__.rsplit(".", 1)[1] for m in COMMANDS}
    modules = {p.stem for p in (CREDITCTL / "commands").glob("*.py") if p.stem != "__init__"}
    assert modules == registered


def test_the_count_at_a_commit_is_the_same_method() -> None:
    """The before/after figures (`--at`) count as this test does: at the committed HEAD they agree with it
    whenever creditctl and the protos have no uncommitted change."""
    import subprocess

    status = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "creditctl", "protos"],
                            capture_output=True, text=True, check=False)
    if status.returncode != 0 or status.stdout.strip():
        pytest.skip("not a git checkout, or creditctl / protos have uncommitted changes")
    found = reachable()
    user = [f for f in found if f not in EXCLUDED]
    assert reachable_at("HEAD") == (sum(found.values()), len(found), sum(found[f] for f in user), len(user))


def reachable_at(commit: str) -> tuple[int, int, int, int]:
    """(reachable, RPCs, user-facing reachable, user-facing) at a past commit of this repository: its
    creditctl scanned the same way, its RPCs read from its .proto files (its stubs need no import)."""
    import io
    import re
    import subprocess
    import tarfile
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        tree = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "creditctl", "protos"], capture_output=True,
                              check=True).stdout
        tarfile.open(fileobj=io.BytesIO(tree)).extractall(tmp, filter="data")
        rpcs: dict[str, str] = {}
        for proto in sorted((Path(tmp) / "protos" / "credits").rglob("*.proto")):
            text = proto.read_text()
            found = re.search(r"^package\s+([\w.]+);", text, re.M)
            package = found.group(1) if found else ""
            for service, body in re.findall(r"service\s+(\w+)\s*\{(.*?)\n\}", text, re.S):
                for method in re.findall(r"\brpc\s+(\w+)\s*\(", body):
                    rpcs[f"{package}.{service}/{method}"] = method
        called = rpc_names_called(Path(tmp) / "creditctl")
    ok = {full for full, method in rpcs.items() if method in called}
    user = [full for full in rpcs if full not in EXCLUDED]
    return len(ok), len(rpcs), len(ok.intersection(user)), len(user)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--at"]:  # python -m tests.creditctl.test_rpc_coverage --at de7a114 3019837 HEAD
        for commit in argv[1:]:
            ok, total, user_ok, user = reachable_at(commit)
            print(f"{commit:10} {ok:3} of {total:3} RPCs reachable; user-facing {user_ok} of {user}")
        return 0
    source = Path(argv[0]) if argv else CREDITCTL
    found = reachable(source)
    by_service: dict[str, list[bool]] = {}
    for full, ok in found.items():
        by_service.setdefault(full.split("/")[0], []).append(ok)
    for service, oks in by_service.items():
        print(f"{service:40} {sum(oks):3} of {len(oks):3} reachable")
    user_facing = [full for full in found if full not in EXCLUDED]
    print(f"{'all':40} {sum(found.values()):3} of {len(found):3} reachable; "
          f"user-facing {sum(found[f] for f in user_facing)} of {len(user_facing)}")
    for full, ok in found.items():
        if not ok:
            print(f"  not reachable: {full}" + (f"  (excluded: {EXCLUDED[full]})" if full in EXCLUDED else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
