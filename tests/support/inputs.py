"""Inputs the tests make: generated histories, a file replaced by a new version in one step,
and input files as a footer would describe them (for the pure planning tests)."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from scorer.jobs.generate import generate
from scorer.pipeline.plan import InputFile

NEW_IDS = 10_000_000  # a replaced file's session ids start here; the old version's are below


def make_history(path, **options):
    """A fresh generated history for tests that modify their input."""
    defaults = dict(sessions=12_000, files=2, days=2, seed=11, row_group_rows=2_000)
    generate(path, **(defaults | options))
    return path


def replace_with_a_new_version(path: Path, row_group_rows: int = 5_000) -> None:
    """Same path and row count, other sessions (new ids, other values), in row groups of
    `row_group_rows`: written beside it under a name no scan picks up, then renamed over it in
    one step."""
    table = pq.read_table(path)
    new = table.set_column(
        table.schema.get_field_index("session_id"),
        "session_id",
        pc.add(table["session_id"], pa.scalar(NEW_IDS, pa.int64())),
    )
    staged = path.with_name(f".{path.name}.new")
    pq.write_table(new, staged, row_group_size=row_group_rows)
    os.replace(staged, path)


def synthetic(relpath, rg_rows, fingerprint="f1"):
    """An InputFile as a footer would describe it, for the pure planning tests."""
    return InputFile(
        path=f"/in/{relpath}",
        identity=f"file:///in/{relpath}",
        relpath=relpath,
        partition=(),
        size=1,
        mtime_ns=1,
        fingerprint=fingerprint,
        row_group_rows=tuple(rg_rows),
        row_group_bytes=tuple(10 * r for r in rg_rows),
        schema=pa.schema([]),
    )
