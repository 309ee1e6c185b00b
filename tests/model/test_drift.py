"""Drift against the card's reference (`scorer.model.drift`): PSI's laws, mergeable states, the
sample of large batches, drift that is there and drift that is not, and the table a real
`scorer score` run writes."""

from __future__ import annotations

import functools
import itertools
import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from support.inputs import make_history

from scorer import score
from scorer.cli import cli
from scorer.model.card import CARD_FILE
from scorer.model.drift import SAMPLE_ROWS, DriftState, drift_schema, drift_table, psi
from scorer.model.runtime import default_model_dir, load_model
from scorer.model.sessions import load_bundled_sessions
from scorer.pipeline import layout

pytestmark = pytest.mark.usefixtures("ray_cluster")


@functools.cache
def _model():
    return load_model()


def _state(table):
    return _model().score_batch(table, drift=True).drift


def _rows(table, **where):
    """The drift rows of `table` (a drift table) matching `where`, by column name."""
    return {
        row["column"]: row
        for row in table.to_pylist()
        if all(row[key] == value for key, value in where.items())
    }


def test_psi_is_zero_for_identical_shares_and_positive_otherwise():
    rng = np.random.default_rng(0)
    for _ in range(50):
        p, q = rng.dirichlet(np.ones(10)), rng.dirichlet(np.ones(10))
        assert psi(p, p) == 0.0
        assert psi(p, q) > 0 and psi(p, q) == pytest.approx(psi(q, p))
    # Empty bins count as PSI_EPSILON: a bin the reference never saw is a large PSI, not inf.
    assert 4 < psi([0.5, 0.5], [1.0, 0.0]) < 10


def test_the_training_data_does_not_drift_from_its_own_reference():
    sessions = load_bundled_sessions()
    table = drift_table("r", {None: _state(sessions)}, _model().card.reference)
    assert table.schema == drift_schema()
    for name, row in _rows(table, scope="overall").items():
        assert row["rows"] == row["rows_ok"] == sessions.num_rows
        if row["reference"] == "calendar":
            assert row["psi"] is None, name
        else:
            assert row["psi"] == pytest.approx(0.0, abs=1e-12), name
        if row["mean"] is not None:
            assert row["mean"] == pytest.approx(row["reference_mean"], rel=1e-6), name


def test_states_merge_in_any_order_to_the_state_of_all_rows():
    sessions = load_bundled_sessions().slice(0, 9_000)  # batches under SAMPLE_ROWS: every row
    whole = _state(sessions)
    parts = [_state(sessions.slice(start, 2_000)) for start in range(0, 9_000, 2_000)]
    for order in itertools.islice(itertools.permutations(parts), 0, None, 17):
        left = functools.reduce(DriftState.merge, order, DriftState())
        right = order[0].merge(functools.reduce(DriftState.merge, order[1:]))
        for merged in (left, right):
            assert (merged.rows, merged.rows_ok, merged.binned) == (9_000, 9_000, 9_000)
            assert np.array_equal(merged.below, whole.below)
            assert np.array_equal(merged.missing, whole.missing)
            np.testing.assert_allclose(merged.sums, whole.sums, rtol=1e-6)


def test_large_batches_bin_a_weighted_sample_close_to_every_row():
    sessions = load_bundled_sessions()
    big = pa.concat_tables([sessions] * 10)  # 123,300 rows: sampled
    state = _state(big)
    assert state.rows == big.num_rows and state.binned == pytest.approx(big.num_rows, rel=0.02)
    table = drift_table("r", {None: state}, _model().card.reference)
    for name, row in _rows(table, scope="overall").items():
        if row["psi"] is not None:
            assert row["psi"] < 0.01, name
    assert big.num_rows // 8 > SAMPLE_ROWS


def _day(path):
    return next(path.rglob("*.parquet"))


def _rewrite(file, **columns):
    table = pq.read_table(file)
    for name, values in columns.items():
        index = table.schema.get_field_index(name)
        table = table.set_column(index, table.schema.field(index), values(table))
    pq.write_table(table, file)


def test_a_zeroed_page_value_day_drifts_in_page_value_only(tmp_path):
    source = make_history(tmp_path / "in", sessions=12_000, files=2, days=2)
    folders = sorted(source.iterdir())
    days = [folder.name.removeprefix("dt=") for folder in folders]
    broken = next(folders[0].glob("*.parquet"))
    _rewrite(broken, page_value=lambda t: pc.multiply(t["page_value"], 0.0))
    summary = score(str(source), str(tmp_path / "out"))
    table = pq.read_table(tmp_path / "out" / layout.run_table_relpath(layout.DRIFT, summary.run_id))
    zeroed = _rows(table, dt=days[0])
    assert zeroed["page_value"]["psi"] > 1.0 and zeroed["page_value"]["mean"] == 0.0
    # The scores follow page_value (the model's strongest input); the other inputs do not move.
    assert zeroed["intent_calibrated"]["psi"] > 0.3
    others = [n for n, r in zeroed.items() if r["psi"] is not None and n != "page_value"]
    assert all(zeroed[n]["psi"] < 0.1 for n in others if n != "intent_calibrated"), zeroed
    clean = _rows(table, dt=days[1])
    assert all(r["psi"] < 0.1 for r in clean.values() if r["psi"] is not None), clean
    assert {
        r["reference"] for n, r in clean.items() if n not in ("month", "special_day", "weekend")
    } == {"month=Nov"}


def test_an_unseen_browser_flood_shows_as_share_unseen(tmp_path):
    source = make_history(tmp_path / "in", sessions=6_000, files=1, days=1)
    rng = np.random.default_rng(1)

    def flooded(table):
        codes = table["browser"].to_numpy()
        return pa.array(np.where(rng.random(len(codes)) < 0.3, 99, codes), pa.int32())

    _rewrite(_day(source), browser=flooded)
    summary = score(str(source), str(tmp_path / "out"))
    table = pq.read_table(tmp_path / "out" / layout.run_table_relpath(layout.DRIFT, summary.run_id))
    browser = _rows(table, scope="overall")["browser"]
    assert browser["share_unseen"] == pytest.approx(0.3, abs=0.02)
    assert browser["psi"] > 1.0 and browser["share_invalid"] == 0.0


def test_a_real_run_writes_drift_per_day_and_overall_with_every_row(history, tmp_path):
    # `history` has two days; nulls in one column show up as its share_missing.
    source = tmp_path / "in"
    shutil.copytree(history, source)
    file = _day(source)
    _rewrite(file, exit_rate=lambda t: pa.array([None] * 100 + t["exit_rate"].to_pylist()[100:]))
    out = tmp_path / "out"
    summary = score(str(source), str(out), actors=2, shard_rows=3_000)
    assert summary.drift_path is not None and summary.drift_skipped is None
    table = pq.read_table(out / layout.DRIFT)  # hive: run_id from the folder, as written
    assert set(table["run_id"].to_pylist()) == {summary.run_id}
    names = [*_model().card.input_names, "intent_calibrated"]
    overall = [r for r in table.to_pylist() if r["scope"] == "overall"]
    assert [r["column"] for r in overall] == names
    assert all(r["rows"] == summary.rows and r["dt"] is None for r in overall)
    days = sorted({r["dt"] for r in table.to_pylist() if r["scope"] == "partition"})
    assert len(days) == 2 and None not in days
    per_day = {day: _rows(table, dt=day)["admin_pages"]["rows"] for day in days}
    assert sum(per_day.values()) == summary.rows
    exit_rate = _rows(table, scope="overall")["exit_rate"]
    assert exit_rate["share_missing"] == pytest.approx(100 / summary.rows)
    assert _rows(table, scope="overall")["intent_calibrated"]["share_missing"] == pytest.approx(
        100 / summary.rows
    )


def test_a_card_without_reference_scores_and_skips_drift_with_one_line(history, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(default_model_dir(), model)
    doc = json.loads((model / CARD_FILE).read_text())
    del doc["reference"]
    (model / CARD_FILE).write_text(json.dumps(doc))
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["score", str(history), str(out), "--model", str(model)])
    assert result.exit_code == 0, result.output
    assert "drift: skipped (model card has no reference)" in result.output
    assert not (out / layout.DRIFT).exists()
    assert pq.read_table(out / layout.SCORES).num_rows == 24_000


def test_a_month_without_a_reference_of_its_own_compares_with_the_year():
    sessions = load_bundled_sessions().slice(0, 3_000)
    january = sessions.set_column(
        sessions.schema.get_field_index("month"),
        "month",
        pa.array(["Jan"] * sessions.num_rows),
    )
    table = drift_table("r", {"2026-01-05": _state(january)}, _model().card.reference)
    rows = _rows(table, scope="partition")
    assert rows["page_value"]["reference"] == "month=Jan:year"
    assert rows["month"]["reference"] == "calendar" and rows["month"]["psi"] is None
