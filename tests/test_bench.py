"""Smoke test of `scorer bench` on tiny data: every contestant measured, files written.

Not a timed test: it checks the bench runs and its table adds up, never how fast anything is.
Ray Data is replaced by its "not installed" path, which keeps the test short and tests the skip.
"""

from __future__ import annotations

import pyarrow.parquet as pq
from click.testing import CliRunner

from scorer.cli import cli
from scorer.evaluation import bench


def test_bench_measures_every_contestant(tmp_path, history, ray_cluster, monkeypatch):
    def no_ray_data(*args, **kwargs):
        raise bench._RayDataMissing("ray[data] is not installed (test)")

    monkeypatch.setattr(bench, "_measure_ray_data", no_ray_data)
    monkeypatch.setattr(bench, "LATENCY_CALLS", 50)
    messages = []
    result = bench.run_bench(
        tmp_path / "bench",
        data=str(history),
        reps=1,
        actors=[1, 2],
        batch_rows=4096,
        on_message=messages.append,
    )

    table = pq.read_table(result.files["measurements"])
    assert table.schema == bench.MEASUREMENTS_SCHEMA
    rows = {(r["contestant"], r["actors"]): r for r in table.to_pylist()}
    for key in [("floor", 1), ("floor", 2), ("scorer", 1), ("scorer", 2), ("scorer_joined", 2)]:
        assert rows[key]["rows"] == 24_000  # every row of the data set, read and written
        assert rows[key]["work_seconds"] > 0 and rows[key]["peak_rss_mb"] > 0
    assert rows[("scorer", 2)]["encode_seconds"] > 0
    assert rows[("scorer", 2)]["cpu_seconds"] > 0 and rows[("floor", 1)]["cpu_seconds"] > 0
    assert (
        rows[("model:latency_onnx", 1)]["latency_p99_us"]
        >= rows[("model:latency_onnx", 1)]["latency_p50_us"]
    )
    assert any("ray_data" in s for s in result.skipped)
    assert any("skipping ray_data" in m for m in messages)

    medians = {(r["contestant"], r["actors"]): r for r in result.medians()}
    assert medians[("scorer", 1)]["scaling_efficiency"] == 1.0
    assert medians[("scorer", 2)]["vs_floor"] > 0
    assert medians[("floor", 2)]["vs_floor"] is None
    assert medians[("scorer", 1)]["cores"] > 0 and medians[("model:score", 1)]["cores"] is None
    for name in ("scaling", "stages"):
        assert result.files[name].stat().st_size > 1000
    assert bench.render(result).row_count == len(medians)
    assert not (tmp_path / "bench" / "work").exists()  # outputs of the contestants cleaned up


def test_bench_help():
    result = CliRunner().invoke(cli, ["bench", "--help"])
    assert result.exit_code == 0
    assert "I/O floor" in result.output and "--actors" in result.output


def test_bench_rejects_bad_actor_list(tmp_path):
    result = CliRunner().invoke(cli, ["bench", "--out", str(tmp_path), "--actors", "1,x"])
    assert result.exit_code == 2
    assert "--actors" in result.output
