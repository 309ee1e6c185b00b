"""Smoke test of `scorer bench` on tiny data: every contestant measured, files written.

Not a timed test: it checks the bench runs and its table adds up, never how fast anything is.
Ray Data is replaced by its "not installed" path, which keeps the test short and tests the skip.
"""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from scorer.cli import cli
from scorer.jobs import bench


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
    default = [r for (contestant, _), r in rows.items() if contestant == "scorer_default"]
    assert len(default) == 1 and default[0]["rows"] == 24_000  # the command as typed
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


def test_whole_job_times_the_scorer_and_its_peers_and_checks_they_agree(tmp_path, history):
    from scorer.jobs.whole_job import CONTESTANTS, render, run_whole_job

    messages = []
    result = run_whole_job(history, tmp_path / "wj", reps=1, on_message=messages.append)
    rows = {r["contestant"]: r for r in result.measurements.to_pylist()}
    assert set(rows) == set(CONTESTANTS)
    assert all(r["rows"] == 24_000 and r["seconds"] > 0 for r in rows.values())
    assert rows["scorer"]["work_seconds"] > 0 and rows["scorer"]["first_commit_seconds"] > 0
    for peer in ("polars", "duckdb"):
        agree = result.agreement[peer]
        assert agree["matched"] == agree["ours"] == agree["theirs"] == 24_000
        assert agree["max_abs_diff_raw"] < 1e-6  # float32 logits both ways
        assert agree["max_abs_diff_calibrated"] < 1e-3  # a steep isotonic segment times that
    medians = {r["contestant"]: r for r in result.medians()}
    assert (
        medians["polars"]["vs_fastest_peer"] <= 1.0 or medians["duckdb"]["vs_fastest_peer"] <= 1.0
    )
    assert render(result).row_count == 3
    assert len(messages) == 3
    assert (tmp_path / "wj" / "whole-job.parquet").is_file()


def test_the_peers_implement_the_cards_calibrators_and_refuse_others():
    import json

    from scorer.errors import ConfigError
    from scorer.jobs.peers import PEERS, peer_script
    from scorer.model.runtime import default_model_dir

    card = json.loads((default_model_dir() / "model.json").read_text())
    for method, params in (("platt", {"a": -1.5, "b": 0.25}), ("none", {})):
        other = card | {"calibration": {"method": method, "params": {"method": method, **params}}}
        for peer in PEERS:
            compile(peer_script(peer, other), f"score_{peer}.py", "exec")
    temperature = card | {"calibration": {"method": "temperature", "params": {"beta": 2.0}}}
    with pytest.raises(
        ConfigError, match="implements calibration isotonic, platt, none, not temperature"
    ):
        peer_script("polars", temperature)
    with pytest.raises(ConfigError, match="unknown peer 'spark'"):
        peer_script("spark", card)
