"""Training and recalibration (scorer.model.train) and the `train` / `calibrate` commands."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from scorer.cli import cli
from scorer.errors import ChecksumError, TrainingDataError
from scorer.metrics import summary
from scorer.model.calibration import FewCalibrationRowsWarning
from scorer.model.card import CALIBRATION_METHODS, CARD_FILE, GRAPH_FILE, load_card
from scorer.model.runtime import load_model
from scorer.model.sessions import load_bundled_sessions
from scorer.model.train import SPLITS, recalibrate, split_rows, train


@pytest.fixture(scope="module")
def sessions() -> pa.Table:
    return load_bundled_sessions()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, sessions):
    directory = tmp_path_factory.mktemp("model")
    train(sessions, directory, calibration="isotonic", seed=0)
    return directory


def replaced(table: pa.Table, name: str, values) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, pa.array(values))


# --- train ------------------------------------------------------------------------------------


def test_card_describes_the_training(model_dir, sessions):
    card = load_card(model_dir)
    splits = card.training.splits
    assert list(splits) == [name for name, _ in SPLITS]
    assert sum(splits.values()) == card.training.rows == sessions.num_rows
    assert card.training.positives == pc.sum(sessions["converted"].cast(pa.int64())).as_py()
    assert card.training.class_weight == "balanced" and card.training.seed == 0
    assert card.calibration.fitted_rows == splits["calibration"]
    assert card.calibration.knots == len(card.calibration.params["x"]) > 1
    assert card.holdout.rows == splits["test"]
    months = next(s for s in card.inputs if s.name == "month")
    assert months.vocabulary == (
        "Jan",
        "Feb",
        "Mar",
        "Apr",
        "May",
        "Jun",
        "Jul",
        "Aug",
        "Sep",
        "Oct",
        "Nov",
        "Dec",
    )
    bounds = {s.name: (s.min, s.max) for s in card.inputs}
    assert bounds["bounce_rate"] == (0, 1) and bounds["page_value"] == (0, None)
    assert [h.version for h in card.history] == ["1.0.0"]


def test_integer_vocabularies_are_the_codes_seen_in_the_train_split(model_dir, sessions):
    card = load_card(model_dir)
    labels = sessions["converted"].to_numpy(zero_copy_only=False).astype(int)
    train_rows = sessions.take(split_rows(labels, 0)["train"])
    for name in ("operating_system", "browser", "region", "traffic_type"):
        spec = next(s for s in card.inputs if s.name == name)
        assert list(spec.vocabulary) == sorted(pc.unique(train_rows[name]).to_pylist())


def test_holdout_metrics_are_those_of_the_written_graph(model_dir, sessions):
    card = load_card(model_dir)
    labels = sessions["converted"].to_numpy(zero_copy_only=False).astype(int)
    test = split_rows(labels, 0)["test"]
    scores = load_model(model_dir).score(sessions.take(test))
    for score, figures in (
        ("intent_raw", card.holdout.raw),
        ("intent_calibrated", card.holdout.calibrated),
    ):
        expected = summary(labels[test], scores[score].to_numpy())
        assert figures == pytest.approx({k: expected[k] for k in figures})
    # Class weighting makes raw scores overconfident; the calibration stage fixes most of it.
    assert card.holdout.raw["ece_width"] > 0.1 > 0.05 > card.holdout.calibrated["ece_width"]


def test_training_is_deterministic_for_a_seed(model_dir, sessions, tmp_path):
    card = train(sessions, tmp_path, calibration="isotonic", seed=0)
    assert card.sha256 == load_card(model_dir).sha256
    assert (tmp_path / GRAPH_FILE).read_bytes() == (model_dir / GRAPH_FILE).read_bytes()


def test_training_reads_a_hive_partitioned_folder(sessions, tmp_path):
    for day, part in enumerate((sessions.slice(0, 6000), sessions.slice(6000))):
        (tmp_path / "data" / f"dt=2026-11-0{day + 1}").mkdir(parents=True)
        pq.write_table(part, tmp_path / "data" / f"dt=2026-11-0{day + 1}" / "part.parquet")
    card = train(tmp_path / "data", tmp_path / "model", calibration="platt")
    assert card.training.rows == sessions.num_rows
    assert card.training.data == str(tmp_path / "data")


def test_isotonic_on_few_calibration_rows_warns(sessions, tmp_path):
    with pytest.warns(FewCalibrationRowsWarning, match="Platt"):
        train(sessions.slice(0, 3000), tmp_path, calibration="isotonic")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.drop_columns(["exit_rate"]), "'exit_rate' is missing"),
        (lambda t: t.drop_columns(["converted"]), "label column 'converted' is missing"),
        (lambda t: replaced(t, "converted", [False] * t.num_rows), "one class only"),
        (lambda t: replaced(t, "converted", [None] + t["converted"].to_pylist()[1:]), "1 null"),
        (lambda t: replaced(t, "converted", ["yes"] * t.num_rows), "type string"),
        (lambda t: replaced(t, "converted", [2] * t.num_rows), "other than 0/1"),
        (
            lambda t: replaced(t, "bounce_rate", [-1.0] * 3 + t["bounce_rate"].to_pylist()[3:]),
            "3 rows have invalid values: out_of_range:bounce_rate",
        ),
        (lambda t: replaced(t, "month", [1] * t.num_rows), "'month' has type int64"),
    ],
)
def test_bad_training_data_is_refused_with_the_problem(sessions, tmp_path, edit, message):
    with pytest.raises(TrainingDataError, match=message):
        train(edit(sessions), tmp_path)
    assert not (tmp_path / CARD_FILE).exists()


# --- recalibrate ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def newer_sessions(sessions):
    """Newer history with a lower base rate: a third of the converted sessions dropped."""
    converted = sessions["converted"].to_numpy(zero_copy_only=False)
    keep = ~converted | (np.arange(sessions.num_rows) % 3 != 0)
    return sessions.filter(pa.array(keep))


@pytest.mark.parametrize("method", CALIBRATION_METHODS)
def test_recalibration_keeps_raw_scores_bit_identical(
    model_dir, sessions, newer_sessions, tmp_path, method
):
    card = recalibrate(newer_sessions, model_dir, tmp_path, method=method)
    old, new = load_model(model_dir), load_model(tmp_path)
    before, after = old.score(sessions), new.score(sessions)
    assert before["intent_raw"].equals(after["intent_raw"])
    assert card.linear == old.card.linear
    assert card.calibration.method == method
    assert card.version == "1.0.0+cal.1"
    assert (
        card.history[-1].version == "1.0.0+cal.1"
        and "linear model unchanged" in card.history[-1].change
    )
    assert card.holdout.rows + card.calibration.fitted_rows == newer_sessions.num_rows


def test_recalibration_follows_the_new_base_rate_and_chains_versions(
    model_dir, newer_sessions, tmp_path
):
    first = recalibrate(newer_sessions, model_dir, tmp_path / "a")
    second = recalibrate(newer_sessions, tmp_path / "a", tmp_path / "b", method="platt")
    assert second.version == "1.0.0+cal.2"
    assert [h.version for h in second.history] == ["1.0.0", "1.0.0+cal.1", "1.0.0+cal.2"]
    rate = np.mean(newer_sessions["converted"].to_numpy(zero_copy_only=False))
    assert abs(first.holdout.calibrated["mean_score"] - rate) < 0.02


def test_recalibration_refuses_a_tampered_model_and_bad_data(model_dir, sessions, tmp_path):
    with pytest.raises(TrainingDataError, match="one class"):
        recalibrate(
            replaced(sessions, "converted", [True] * sessions.num_rows), model_dir, tmp_path / "x"
        )
    for name in (GRAPH_FILE, CARD_FILE):
        (tmp_path / name).write_bytes((model_dir / name).read_bytes())
    (tmp_path / GRAPH_FILE).write_bytes((tmp_path / GRAPH_FILE).read_bytes()[:-1])
    with pytest.raises(ChecksumError):
        recalibrate(sessions, tmp_path, tmp_path / "y")


def _late_labels(sessions: pa.Table, tmp_path, rows=None):
    """``sessions`` without their label, and the label apart (shuffled, as a join must not care)."""
    data, labels = tmp_path / "sessions.parquet", tmp_path / "labels.parquet"
    pq.write_table(sessions.drop_columns(["converted"]), data)
    apart = sessions.select(["session_id", "converted"]) if rows is None else rows
    pq.write_table(apart.take(np.random.default_rng(0).permutation(apart.num_rows)), labels)
    return data, labels


def test_recalibration_with_late_labels_equals_recalibration_of_labelled_sessions(
    model_dir, newer_sessions, tmp_path
):
    data, labels = _late_labels(newer_sessions, tmp_path)
    joined = recalibrate(data, model_dir, tmp_path / "joined", labels_from=labels)
    labelled = recalibrate(newer_sessions.sort_by("session_id"), model_dir, tmp_path / "labelled")
    assert joined.calibration.params == labelled.calibration.params
    assert joined.holdout.calibrated == labelled.holdout.calibrated


def test_late_labels_labelled_twice_or_without_the_label_are_refused(
    model_dir, newer_sessions, tmp_path
):
    pairs = newer_sessions.select(["session_id", "converted"])
    data, labels = _late_labels(newer_sessions, tmp_path, pa.concat_tables([pairs, pairs[:3]]))
    first = ", ".join(str(k) for k in sorted(pairs["session_id"][:3].to_pylist()))
    with pytest.raises(
        TrainingDataError, match=rf"labels.parquet: 3 key\(s\) labelled more than once: {first}"
    ):
        recalibrate(data, model_dir, tmp_path / "x", labels_from=labels)
    pq.write_table(pairs.drop_columns(["converted"]), labels)
    with pytest.raises(TrainingDataError, match="labels.parquet: no column 'converted'"):
        recalibrate(data, model_dir, tmp_path / "y", labels_from=labels)


# --- commands ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sessions_file(tmp_path_factory, sessions):
    path = tmp_path_factory.mktemp("data") / "sessions.parquet"
    pq.write_table(sessions, path)
    return path


def test_train_and_calibrate_commands(sessions_file, tmp_path):
    runner = CliRunner()
    result = runner.invoke(
        cli,
        [
            "train",
            str(sessions_file),
            "--out",
            str(tmp_path / "m"),
            "--calibration",
            "platt",
            "--seed",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "ECE width" in result.output and "calibrated" in result.output
    card = load_card(tmp_path / "m")
    assert (card.name, card.training.seed, card.calibration.method) == ("m", 3, "platt")

    result = runner.invoke(
        cli,
        [
            "calibrate",
            str(sessions_file),
            "--model",
            str(tmp_path / "m"),
            "--out",
            str(tmp_path / "m2"),
            "--method",
            "isotonic",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "1.0.0+cal.1" in result.output
    inspected = json.loads(runner.invoke(cli, ["inspect", "--json", str(tmp_path / "m2")]).output)
    assert inspected["calibration"]["method"] == "isotonic" and inspected["checksum"] == "ok"


def test_train_command_refuses_bad_data_with_exit_2(sessions, tmp_path):
    path = tmp_path / "bad.parquet"
    pq.write_table(sessions.drop_columns(["converted"]), path)
    result = CliRunner().invoke(cli, ["train", str(path), "--out", str(tmp_path / "m")])
    assert result.exit_code == 2
    assert "TrainingDataError:" in result.output and "'converted' is missing" in result.output
    assert result.stderr == (
        f"TrainingDataError: {path}: the label column 'converted' is missing\n"
    )


def test_train_command_shows_the_few_rows_warning(sessions, tmp_path):
    path = tmp_path / "small.parquet"
    pq.write_table(sessions.slice(0, 3000), path)
    result = CliRunner().invoke(cli, ["train", str(path), "--out", str(tmp_path / "m")])
    assert result.exit_code == 0
    assert "Warning:" in result.output and "Platt" in result.output


@pytest.mark.parametrize("command", ["train", "calibrate", "inspect"])
def test_model_commands_have_help(command):
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0 and len(result.output) > 300
