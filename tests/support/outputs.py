"""Checks of an OUTPUT after a run (docs/output.md's layout): what was committed, the run's
and the shards' stats, and that every input session is in the scores exactly once."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq


def commits(out: Path) -> int:
    folder = out / "_scorer" / "commits"
    return len(list(folder.glob("*.json"))) if folder.is_dir() else 0


def shard_stats(out: Path, run_id: str) -> list[dict]:
    return pq.read_table(out / "stats" / "shards" / f"run_id={run_id}").to_pylist()


def run_stats(out: Path, run_id: str) -> dict:
    return pq.read_table(out / "stats" / "runs" / f"run_id={run_id}").to_pylist()[0]


def assert_exactly_once(history: Path, out: Path) -> None:
    """Every input session is in the scores once, and nothing else is."""
    got = ds.dataset(out / "scores").to_table(columns=["session_id"])["session_id"]
    want = ds.dataset(history).to_table(columns=["session_id"])["session_id"]
    assert len(got) == len(want)
    assert pc.count_distinct(got).as_py() == len(got), "a session was scored twice"
    assert pc.all(pc.is_in(want, value_set=got)).as_py()


def assert_scores_whole(history: Path, out: Path) -> None:
    """Each file under scores/ is readable and holds all the rows of its shard's row groups."""
    for path in (out / "scores").rglob("*"):
        if path.is_dir():
            continue
        assert path.suffix == ".parquet", f"{path}: not a score file"
        stem, _, groups = path.stem.rpartition("-rg")
        start, stop = (int(g) for g in groups.split("-"))
        source = pq.ParquetFile(history / path.parent.name / f"{stem}.parquet")
        want = sum(source.metadata.row_group(i).num_rows for i in range(start, stop))
        assert pq.read_table(path).num_rows == want, f"{path}: partial"


def assert_once(history: Path, table: pa.Table) -> None:
    """Every session of HISTORY is in TABLE (a published table's scores) once."""
    want = ds.dataset(history).to_table(columns=["session_id"])["session_id"]
    got = table["session_id"]
    assert len(got) == len(want) == pc.count_distinct(got).as_py(), "a session missing or twice"
    assert pc.all(pc.is_in(want, value_set=got)).as_py()


def assert_every_row_once(history: Path, scores: ds.Dataset) -> None:
    got = scores.to_table(columns=["session_id"])["session_id"]
    want = ds.dataset(history).to_table(columns=["session_id"])["session_id"]
    assert len(got) == len(want), f"{len(got):,} rows for {len(want):,} sessions"
    assert pc.count_distinct(got).as_py() == len(got), "a session was scored twice"
    assert pc.all(pc.is_in(want, value_set=got)).as_py()
