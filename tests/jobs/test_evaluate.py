"""`scorer evaluate`: late labels joined to real committed scores, figures as a labelled run's."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import scorer
from scorer.cli import cli
from scorer.jobs.evaluate import SCORED_RUN_IDS, evaluate
from scorer.jobs.generate import generate
from scorer.pipeline import layout

KEY, LABEL = "session_id", "converted"


def split_off_labels(history: Path, sessions: Path, labels: Path) -> None:
    """Live data and its late labels: `history` without the label column, and the label column
    with the key, both in the same dt folders."""
    for path in sorted(history.rglob("*.parquet")):
        relative = path.relative_to(history)
        table = pq.read_table(path)
        for root, part in (
            (sessions, table.drop_columns([LABEL])),
            (labels, table.select([KEY, LABEL])),
        ):
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(part, root / relative)


def scored_unlabelled(tmp: Path, **options) -> tuple[Path, Path, Path]:
    """(history with labels, OUTPUT of its unlabelled sessions, labels folder)."""
    history, sessions, labels, output = (
        tmp / name for name in ("history", "live", "labels", "out")
    )
    generate(
        history, **(dict(sessions=12_000, files=2, days=2, seed=5, row_group_rows=2_000) | options)
    )
    split_off_labels(history, sessions, labels)
    summary = scorer.score(str(sessions), str(output))
    assert summary.exit_code == 0 and summary.rows == 12_000
    return history, output, labels


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    return scored_unlabelled(tmp_path_factory.mktemp("evaluate"))


def run(*args: str):
    return CliRunner().invoke(cli, ["evaluate", *map(str, args)])


def calibration_files(output: Path) -> list[Path]:
    return sorted((output / layout.CALIBRATION).glob("*/*.parquet"))


def test_evaluate_equals_a_duckdb_recomputation_and_a_labelled_run(scored, tmp_path):
    history, output, labels = scored
    result = run(output, labels, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["alerts"] == [] and summary["exit_code"] == 0
    assert summary["rows_scored"] == summary["rows_labelled"] == summary["label_rows"] == 12_000
    assert summary["labels_unscored"] == summary["scores_unlabelled"] == 0
    path = output / layout.run_table_relpath(layout.CALIBRATION, summary["run_id"])
    assert summary["calibration_path"] == str(path)
    table = pq.read_table(path)
    mine = {(r["scope"], r["dt"]): r for r in table.to_pylist()}

    # What an analyst would write over the same files.
    expected = duckdb.sql(
        f"""
        SELECT s.dt::VARCHAR AS dt, count(*) AS rows, sum(l.{LABEL}::INT) AS positives,
               avg(intent_raw) AS mean_raw, avg(intent_calibrated) AS mean_calibrated,
               avg((intent_calibrated - l.{LABEL}::INT) ^ 2) AS brier_calibrated
        FROM read_parquet('{output}/scores/**/*.parquet', hive_partitioning = true) s
        JOIN read_parquet('{labels}/**/*.parquet') l USING ({KEY})
        WHERE intent_raw IS NOT NULL
        GROUP BY ROLLUP (s.dt)
        """
    ).fetchall()
    assert len(expected) == 3
    for day, rows, positives, mean_raw, mean_calibrated, brier in expected:
        row = mine[("overall" if day is None else "partition", day)]
        assert (row["rows"], row["positives"]) == (rows, positives)
        assert row["mean_raw"] == pytest.approx(mean_raw, abs=1e-6)
        assert row["mean_calibrated"] == pytest.approx(mean_calibrated, abs=1e-6)
        assert row["brier_calibrated"] == pytest.approx(brier, abs=1e-6)
        assert row["rows_null_label"] == 0

    # The same figures a labelled score run of the same sessions writes.
    labelled = scorer.score(str(history), str(tmp_path / "labelled"))
    theirs = pq.read_table(
        tmp_path / "labelled" / layout.run_table_relpath(layout.CALIBRATION, labelled.run_id)
    )
    assert theirs.num_rows == table.num_rows
    for a, b in zip(theirs.to_pylist(), table.to_pylist(), strict=True):
        for name, value in a.items():
            if name == "run_id":
                continue
            if isinstance(value, float):
                assert b[name] == pytest.approx(value, rel=1e-9), name
            else:
                assert b[name] == value, name


def test_the_run_evaluated_is_recorded_and_reads_with_the_score_runs_calibration(scored):
    _, output, labels = scored
    evaluation = evaluate(str(output), str(labels))
    runs = sorted(p.name.removeprefix("run_id=") for p in (output / "stats/runs").iterdir())
    assert evaluation.scored_run_ids == runs
    table = pq.read_table(evaluation.calibration_path)
    assert table.column(SCORED_RUN_IDS).to_pylist() == [runs] * table.num_rows
    assert table.schema.metadata[b"scorer.evaluate.labels"] == str(labels).encode()
    assert evaluation.run_id[:8].isdigit() and evaluation.run_id not in runs
    # Every calibration file of OUTPUT together, as docs/monitoring.md's query reads them.
    read = duckdb.sql(
        f"SELECT DISTINCT run_id, {SCORED_RUN_IDS} IS NULL AS scored "
        f"FROM read_parquet('{output}/calibration/*/*.parquet', hive_partitioning = true, "
        "union_by_name = true)"
    ).fetchall()
    assert (evaluation.run_id, False) in read


def test_labels_of_some_days_unscored_labels_and_unlabelled_scores_are_counted(scored, tmp_path):
    _, output, labels = scored
    days = sorted(p.name for p in labels.iterdir())
    first = pq.read_table(sorted((labels / days[0]).glob("*.parquet"))[0])
    # Late labels of one day, 100 of its sessions still unlabelled, 7 labels of sessions never
    # scored; a single file without dt folders.
    late = pa.concat_tables(
        [
            first.slice(100),
            pa.table(
                {KEY: pa.array(range(10**12, 10**12 + 7), pa.int64()), LABEL: [True] * 7},
                schema=first.schema,
            ),
        ]
    )
    pq.write_table(late, tmp_path / "late.parquet")
    result = run(output, tmp_path / "late.parquet", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    scored_rows = 12_000
    assert summary["rows_labelled"] == first.num_rows - 100
    assert summary["scores_unlabelled"] == scored_rows - (first.num_rows - 100)
    assert summary["labels_unscored"] == 7 and summary["label_rows"] == late.num_rows
    day = days[0].removeprefix("dt=")
    assert summary["days"] == [day] and summary["days_without_labels"] == [days[1][3:]]
    table = pq.read_table(summary["calibration_path"]).to_pylist()
    assert [(r["scope"], r["dt"]) for r in table] == [("partition", day), ("overall", None)]
    # The unlabelled sessions of the labelled day are in its row, as in a labelled run's.
    file_rows = pq.read_metadata(sorted((labels / days[0]).glob("*.parquet"))[0]).num_rows
    day_rows = sum(pq.read_metadata(p).num_rows for p in (labels / days[0]).glob("*.parquet"))
    assert table[0]["rows"] + table[0]["rows_null_score"] == file_rows - 100
    assert table[0]["rows_null_label"] == day_rows - (file_rows - 100)

    text = run(output, tmp_path / "late.parquet")
    assert text.exit_code == 0
    assert "7 labels of sessions never scored" in text.stdout
    assert f"days without labels: {days[1][3:]}" in text.stdout


@pytest.mark.parametrize("scored_too", [True, False], ids=["scored-key", "unscored-key"])
def test_duplicate_keys_are_an_error_naming_key_and_file_and_nothing_is_written(
    scored, tmp_path, scored_too
):
    _, output, labels = scored
    before = calibration_files(output)
    day = sorted(labels.iterdir())[0]
    table = pq.read_table(sorted(day.glob("*.parquet"))[0])
    # A scored session labelled again in another file, or a session never scored in two files.
    key = table.column(KEY)[3].as_py() if scored_too else 10**13
    copy = tmp_path / "labels"
    for path in labels.rglob("*.parquet"):
        (copy / path.relative_to(labels)).parent.mkdir(parents=True, exist_ok=True)
        (copy / path.relative_to(labels)).write_bytes(path.read_bytes())
    again = ["again.parquet"] if scored_too else ["again.parquet", "again-2.parquet"]
    for name in again:
        pq.write_table(
            pa.table({KEY: pa.array([key], pa.int64()), LABEL: [True]}), copy / day.name / name
        )
    result = run(output, copy)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("EvaluateError: ") and result.stderr.count("\n") == 1
    assert f"{key!r} (2 times: " in result.stderr and "again.parquet" in result.stderr
    assert "'session_id'" in result.stderr
    assert calibration_files(output) == before


@pytest.mark.parametrize("column", [KEY, LABEL])
def test_a_missing_key_or_label_column_is_an_error_naming_it(scored, tmp_path, column):
    _, output, labels = scored
    path = sorted(labels.rglob("*.parquet"))[0]
    table = pq.read_table(path).rename_columns({column: "other"})
    pq.write_table(table, tmp_path / "labels.parquet")
    result = run(output, tmp_path / "labels.parquet")
    assert result.exit_code == 2, result.output
    assert f"no column '{column}'" in result.stderr and "labels.parquet" in result.stderr
    flag = "--key-column" if column == KEY else "--label-column"
    assert flag in result.stderr


def test_a_key_the_scores_lack_and_a_mistyped_key_are_errors(scored, tmp_path):
    _, output, labels = scored
    result = run(output, labels, "--key-column", "visitor")
    assert result.exit_code == 2 and "no key column 'visitor'" in result.stderr
    path = sorted(labels.rglob("*.parquet"))[0]
    table = pq.read_table(path)
    as_text = table.set_column(0, KEY, pc.cast(table.column(KEY), pa.string()))
    pq.write_table(as_text, tmp_path / "text.parquet")
    result = run(output, tmp_path / "text.parquet")
    assert result.exit_code == 2 and "is string in LABELS but int64 in the scores" in result.stderr


def test_an_output_without_scores_is_an_error(tmp_path, scored):
    result = run(tmp_path, scored[2])
    assert result.exit_code == 2 and "no committed scores" in result.stderr


def test_only_committed_files_are_read(scored, tmp_path):
    """A temporary file of a crashed run and an unreferenced file under scores/ are not scores."""
    _, output, labels = scored
    some = sorted((output / "scores").rglob("*.parquet"))[0]
    stray = [output / layout.TMP / "dead-run" / "x.parquet", some.parent / "orphan.parquet"]
    for path in stray:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(some.read_bytes())
    try:
        evaluation = evaluate(str(output), str(labels))
    finally:
        for path in stray:
            path.unlink()
    assert evaluation.rows_scored == evaluation.rows_labelled == 12_000


def test_the_funnel_raises_a_calibration_alert_and_fail_on_alert_exits_3_after_writing(tmp_path):
    _, output, labels = scored_unlabelled(tmp_path, conversion_rate=0.015, seed=9)
    before = calibration_files(output)
    result = run(output, labels, "--fail-on-alert", "--alert-min-rows", "1000", "--json")
    assert result.exit_code == 3, result.output
    summary = json.loads(result.stdout)
    assert summary["exit_code"] == 3
    assert len(calibration_files(output)) == len(before) + 1  # written before exiting 3
    alerts = summary["alerts"]
    days = sorted(p.name[3:] for p in labels.iterdir())
    assert [a["dt"] for a in alerts] == days
    assert {a["kind"] for a in alerts} == {"calibration"}
    assert all(a["metric"] == "ece_width" and a["threshold"] == 0.1 for a in alerts)
    assert all(a["value"] > 0.1 for a in alerts)
    lines = [line for line in result.stderr.splitlines() if line.startswith("ALERT ")]
    assert lines == [a["message"] for a in alerts]
    assert lines[0].startswith(f"ALERT calibration dt={days[0]} intent_calibrated: ece_width ")
    assert f"--since {days[0]} --until {days[-1]}" in lines[0]
    assert f" --labels {labels} --model " in lines[0]  # the scored INPUT with these labels
    # Without the flag the alerts are printed but the exit is 0.
    assert run(output, labels, "--alert-min-rows", "1000").exit_code == 0


def test_thresholds_come_from_the_config_and_flags_win(scored, tmp_path):
    _, output, labels = scored
    config = tmp_path / "job.toml"
    config.write_text("[monitor]\nece = 0.001\nmin_rows = 10\nfail_on_alert = true\n")
    assert run(output, labels, "--config", config).exit_code == 3
    assert run(output, labels, "--config", config, "--alert-ece", "0.9").exit_code == 0
    config.write_text("[monitor]\nece_max = 0.1\n")
    result = run(output, labels, "--config", config)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"ConfigError: {config}: unknown key 'monitor.ece_max'")


@pytest.mark.slow
def test_scores_and_labels_on_s3(tmp_path):
    """OUTPUT and LABELS on a real S3 server (moto on loopback), endpoint from [storage]."""
    import pyarrow.fs as pafs
    from support.servers import moto_s3

    credentials = {"AWS_ACCESS_KEY_ID": "evaluate-key", "AWS_SECRET_ACCESS_KEY": "evaluate-secret"}
    with moto_s3(credentials) as endpoint:
        s3 = pafs.S3FileSystem(
            endpoint_override=endpoint, scheme="http", allow_bucket_creation=True
        )
        s3.create_dir("lake")
        history, live, labels = tmp_path / "history", tmp_path / "live", tmp_path / "labels"
        generate(history, sessions=4_000, files=2, days=2, seed=2, row_group_rows=1_000)
        split_off_labels(history, live, labels)
        pafs.copy_files(str(labels), "lake/labels", destination_filesystem=s3)
        storage = {"storage__endpoint_override": endpoint, "storage__scheme": "http"}
        assert scorer.score(str(live), "s3://lake/scored", **storage).exit_code == 0
        config = tmp_path / "job.toml"
        config.write_text(f"[storage]\nendpoint_override = '{endpoint}'\nscheme = 'http'\n")
        result = run("s3://lake/scored", "s3://lake/labels", "--config", config, "--json")
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout)
        assert summary["rows_labelled"] == 4_000 and summary["labels_unscored"] == 0
        path = summary["calibration_path"].split("?")[0].removeprefix("s3://")
        overall = pq.read_table(path, filesystem=s3).to_pylist()[-1]
        assert overall["scope"] == "overall" and overall["rows"] == 4_000


def test_integer_labels_are_read_as_0_1_and_other_values_are_an_error(scored, tmp_path):
    _, output, labels = scored
    path = sorted(labels.rglob("*.parquet"))[0]
    table = pq.read_table(path)
    as_int = table.set_column(1, LABEL, pc.cast(table.column(LABEL), pa.int8()))
    pq.write_table(as_int, tmp_path / "ints.parquet")
    evaluation = evaluate(str(output), str(tmp_path / "ints.parquet"))
    positives = pc.sum(pc.cast(table.column(LABEL), pa.int64())).as_py()
    assert evaluation.calibration.to_pylist()[-1]["positives"] == positives
    twos = as_int.set_column(1, LABEL, pc.multiply(as_int.column(LABEL), pa.scalar(2, pa.int8())))
    pq.write_table(twos, tmp_path / "twos.parquet")
    result = run(output, tmp_path / "twos.parquet")
    assert result.exit_code == 2
    assert "label column 'converted': labels must be boolean or 0/1" in result.stderr
