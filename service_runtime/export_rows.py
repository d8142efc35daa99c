"""Rows of a streaming export as bytes: CSV (a header on the first chunk only) or JSON lines. One rule for
every export (the ledger's ExportStatement, the invoice service's ExportInvoices)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from typing import Any


def render(rows: Iterable[dict[str, Any]], columns: Sequence[str], as_json: bool, header: bool) -> bytes:
    if as_json:
        return "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows).encode()
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()
