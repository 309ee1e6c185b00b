"""`scorer report` on a real scored OUTPUT: its figures equal a recomputation from the scores."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest
from click.testing import CliRunner

from scorer import metrics
from scorer.cli import cli
from scorer.jobs.report import read_report
from scorer.pipeline.entry import score

pytestmark = pytest.mark.usefixtures("ray_cluster")


@pytest.fixture(scope="module")
def scored(history, tmp_path_factory):
    out = tmp_path_factory.mktemp("scored") / "out"
    summary = score(str(history), str(out), actors=2, shard_rows=6_000)
    return history, out, summary


def _joined(history, out):
    scores = ds.dataset(out / "scores", format="parquet", partitioning="hive").to_table()
    labels = ds.dataset(history, format="parquet", partitioning="hive").to_table(
        columns=["session_id", "converted"]
    )
    joined = scores.join(labels, "session_id")
    return joined.filter(pc.equal(joined["status"], "ok"))


def test_calibration_table_equals_a_recomputation_from_the_scores(scored):
    history, out, summary = scored
    joined = _joined(history, out)
    y = joined["converted"].to_numpy(zero_copy_only=False).astype(np.int8)
    report = read_report(out, summary.run_id)
    overall = next(row for row in report.calibration if row["scope"] == "overall")
    for score_name, suffix in (("intent_raw", "raw"), ("intent_calibrated", "calibrated")):
        p = joined[score_name].to_numpy()  # float32, as stored: log loss clips at its epsilon
        exact = metrics.summary(y, p)
        assert overall["rows"] == exact["rows"] and overall["positives"] == exact["positives"]
        assert overall[f"mean_{suffix}"] == pytest.approx(exact["mean_score"], abs=1e-9)
        assert overall[f"brier_{suffix}"] == pytest.approx(exact["brier"], abs=1e-9)
        assert overall[f"log_loss_{suffix}"] == pytest.approx(exact["log_loss"], abs=1e-7)
        assert overall[f"ece_width_{suffix}"] == pytest.approx(exact["ece_width"], abs=1e-9)
        assert overall[f"roc_auc_{suffix}"] == pytest.approx(exact["roc_auc"], abs=1e-3)
        assert overall[f"ece_mass_{suffix}"] == pytest.approx(exact["ece_mass"], abs=2e-3)


def test_report_command_prints_and_draws(scored, tmp_path):
    _, out, summary = scored
    result = CliRunner().invoke(cli, ["report", str(out), "--out", str(tmp_path / "plots")])
    assert result.exit_code == 0, result.output
    assert summary.run_id in result.output and "ECE" in result.output
    pngs = {p.name for p in (tmp_path / "plots").glob("*.png")}
    expected = {"reliability.png", "score_histogram.png", "calibration_by_day.png"}
    expected |= {"throughput.png", "calibration_over_time.png"}
    if any((out / "drift").glob("run_id=*/*.parquet")):  # where score runs write drift
        expected.add("drift_psi.png")
    else:
        assert "No drift tables" in result.output
    assert pngs == expected
    for png in (tmp_path / "plots").glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
