"""The query examples of the docs pages that hold them run against a fake OUTPUT tree.

Every ```sql block is run with DuckDB, its 'scored/' (OUTPUT) and 'history/' (labelled INPUT)
paths pointed at the fake tree, and must return rows: on a tree with data in every table, an
empty answer means the example is wrong. Python blocks that read 'scored/' run too, from a folder
where 'scored/' and 'history/' are the fake trees.
"""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from support.output_tree import make_output_tree

ROOT = Path(__file__).resolve().parents[2]
# The pages whose examples read scored/ and history/: the SQL recipes, the failures query and
# the late labels' calibration query.
DOCS = [ROOT / "docs" / page for page in ("querying.md", "backfills.md", "monitoring.md")]
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def blocks(language: str) -> list:
    found = [
        pytest.param(body, id=f"{doc.name}:{doc.read_text()[: m.start()].count(chr(10)) + 1}")
        for doc in DOCS
        for m in FENCE.finditer(doc.read_text())
        if m.group(1) == language and (body := m.group(2))
    ]
    return [b for b in found if language == "sql" or "scored/" in b.values[0]]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A folder holding scored/ (a fake OUTPUT) and history/ (its labelled input)."""
    work = tmp_path_factory.mktemp("docs")
    fake = make_output_tree(work / "scored")
    rng = np.random.default_rng(7)
    visitor = pa.array(rng.choice(["New_Visitor", "Returning_Visitor"], fake.scores.num_rows))
    history = fake.scores.select(["session_id", "converted", "dt"])
    history = history.append_column("visitor_type", visitor)
    for day in pc.unique(history["dt"]).to_pylist():
        folder = work / "history" / f"dt={day}"
        folder.mkdir(parents=True)
        day_rows = history.filter(pc.equal(history["dt"], day)).drop(["dt"])
        pq.write_table(day_rows, folder / "sessions.parquet")
    return work


def test_the_docs_have_sql():
    assert blocks("sql"), f"no ```sql blocks in {[str(d) for d in DOCS]}"


@pytest.mark.parametrize("sql", blocks("sql"))
def test_sql_example_runs_and_returns_rows(sql, workdir):
    for name in ("scored", "history"):
        sql = sql.replace(f"'{name}/", f"'{workdir / name}/")
    rows = duckdb.connect().execute(sql).fetchall()
    assert rows, sql


@pytest.mark.parametrize("code", blocks("python"))
def test_python_example_runs(code, workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    exec(compile(code, "<docs>", "exec"), {})
