"""A server-streaming export written to a file (with a progress bar on stderr) or to stdout: one loop for
`creditctl statements --csv|--json` and `creditctl invoices export`."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterable, Callable
from pathlib import Path
from typing import IO, Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from creditctl.output import console


async def download(chunks: AsyncIterable[Any], output: Path | None, noun: str,
                   counts: Callable[[Any], tuple[int, int]]) -> int:
    """Writes each chunk's `data`; `counts(chunk)` is (done, total) for the bar. Returns the bytes written."""
    sink: IO[bytes] = output.open("wb") if output else sys.stdout.buffer
    columns = (TextColumn("exporting"), BarColumn(), MofNCompleteColumn(), TextColumn(noun), TimeElapsedColumn())
    written = 0
    try:
        with Progress(*columns, console=console(stderr=True), disable=output is None, transient=True) as bar:
            task = bar.add_task(noun, total=None)
            async for chunk in chunks:
                sink.write(chunk.data)
                written += len(chunk.data)
                done, total = counts(chunk)
                bar.update(task, completed=done, total=total)
    finally:
        if output:
            sink.close()
    return written
