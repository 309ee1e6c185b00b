"""Backfills that survive (docs/backfills.md): real processes killed with real signals, broken files,
preflight refusals, and bad rows.

In-process runs join the session's shared Ray (``ray_cluster``); a test starts a ``scorer score``
subprocess only where a driver itself must die, and kills every process that driver started,
by pid, when it ends (a SIGKILLed driver leaves its Ray agents running for about a minute).

Runs that must be caught mid-flight score "slow" inputs: row groups of 10 rows read in batches
of 5, so a 500-row shard takes a few hundred milliseconds on any machine, whatever its speed.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from support.faults import (
    SLOW_HISTORY,
    TOTAL_SHARDS,
    ScoresWatcher,
    stopped_writing_a_shard,
    truncate,
    wait_for,
    zero_data_pages,
)
from support.inputs import make_history
from support.outputs import (
    assert_exactly_once,
    assert_scores_whole,
    commits,
    run_stats,
    shard_stats,
)

from scorer.cli import cli
from scorer.model.runtime import default_model_dir, load_model
from scorer.pipeline.entry import score

SLOW_OPTIONS = ["--actors", "2", "--batch-rows", "5", "--shard-rows", "500"]
SLOW = dict(actors=2, batch_rows=5, shard_rows=500)


# -- killed and interrupted processes ----------------------------------------------------------


@pytest.mark.usefixtures("ray_cluster")
def test_an_actor_killed_mid_shard_costs_a_retry_not_the_run(tmp_path):
    history = make_history(tmp_path / "in", **SLOW_HISTORY)
    out = tmp_path / "out"
    with ScoresWatcher(out) as watcher, ThreadPoolExecutor(1) as background:
        run = background.submit(score, str(history), str(out), **SLOW)
        victim, temp_file = wait_for(
            lambda: stopped_writing_a_shard(out), 120, "an actor writing a shard"
        )
        victim.kill()  # stopped mid-shard: the kill lands while the shard is in flight
        summary = run.result(timeout=180)

    assert summary.exit_code == 0 and summary.shards_failed == 0
    assert summary.shards_committed == TOTAL_SHARDS and summary.rows == 6_000
    assert_exactly_once(history, out)
    assert not watcher.bad and watcher.seen
    stats = shard_stats(out, summary.run_id)
    assert sum(r["status"] == "committed" for r in stats) == TOTAL_SHARDS
    killed = temp_file.split("/_scorer/tmp/")[1].split("/", 1)[1]  # tmp/<run_id>/scores/...
    attempts = sorted((r["attempt"], r["status"]) for r in stats if r["output_path"] == killed)
    assert attempts == [(1, "failed"), (2, "committed")]
    failed = next(r for r in stats if r["status"] == "failed")
    assert "actor died" in failed["error"]
    assert run_stats(out, summary.run_id)["attempts_failed"] == 1
    assert not (out / "_scorer" / "tmp" / summary.run_id).exists()


@pytest.mark.usefixtures("ray_cluster")
def test_a_refused_commit_is_retried_while_the_actors_go_on(tmp_path, monkeypatch):
    """Commits run on the driver's commit thread while actors score their next shards; one that
    storage refuses (here: a full disk on the first commit) is retried like any failed attempt."""
    from scorer.errors import StorageError
    from scorer.pipeline.manifest import Manifest

    history = make_history(tmp_path / "in", sessions=6_000, files=2, days=1, row_group_rows=500)
    out = tmp_path / "out"
    real_commit = Manifest.commit_shard
    refused = []

    def disk_full_once(self, shard, **options):
        if not refused:
            refused.append(shard.output_relpath)
            raise StorageError(f"{shard.output_relpath}: cannot commit: [Errno 28] No space left")
        return real_commit(self, shard, **options)

    monkeypatch.setattr(Manifest, "commit_shard", disk_full_once)
    summary = score(str(history), str(out), actors=2, shard_rows=1_000)

    assert summary.exit_code == 0 and summary.shards_failed == 0
    assert summary.shards_committed == 6 and summary.rows == 6_000
    assert_exactly_once(history, out)
    stats = shard_stats(out, summary.run_id)
    attempts = sorted((r["attempt"], r["status"]) for r in stats if r["output_path"] == refused[0])
    assert attempts == [(1, "failed"), (2, "committed")]
    failed = next(r for r in stats if r["status"] == "failed")
    assert "StorageError" in failed["error"] and "No space left" in failed["error"]
    assert commits(out) == 6


@pytest.mark.slow
def test_a_killed_driver_is_resumed_by_the_same_command(tmp_path, drivers):
    history = make_history(tmp_path / "in", **SLOW_HISTORY)
    out = tmp_path / "out"
    command = [str(history), str(out), *SLOW_OPTIONS, "--json"]
    with ScoresWatcher(out) as watcher:
        first = drivers.start(*command)
        wait_for(lambda: commits(out) >= 1, 180, "the first commit")

        # While it runs, a second run on the same OUTPUT is refused and names the holder.
        second = CliRunner().invoke(cli, ["score", *command])
        assert second.exit_code == 2, second.output
        assert "LockError" in second.output and f"pid {first.pid}" in second.output

        committed_before = drivers.signal_mid_run(first, signal.SIGKILL, out)
        code, _, _ = drivers.wait(first, 30)
        assert code == -signal.SIGKILL
        assert commits(out) == committed_before >= 1
        assert_scores_whole(history, out)

        # Its Ray agents are still alive, holding their ports: the rerun must not care.
        rerun = drivers.start(*command)
        code, stdout, stderr = drivers.wait(rerun, 240)
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert "took over the lock" in stderr and f"pid {first.pid}" in stderr
    assert summary["shards_skipped"] >= committed_before
    assert summary["shards_skipped"] + summary["shards_committed"] == TOTAL_SHARDS
    assert summary["rows"] + summary["rows_skipped"] == 6_000
    stats = shard_stats(out, summary["run_id"])
    assert sum(r["status"] == "skipped" for r in stats) == summary["shards_skipped"]
    assert_exactly_once(history, out)
    assert_scores_whole(history, out)
    assert not watcher.bad


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_sigint_and_sigterm_abandon_in_flight_shards_and_the_rerun_completes(tmp_path, drivers):
    history = make_history(tmp_path / "in", **SLOW_HISTORY)
    out = tmp_path / "out"
    command = [str(history), str(out), *SLOW_OPTIONS]
    interrupted_runs = []
    with ScoresWatcher(out) as watcher:
        # Ctrl-C reaches the whole foreground process group; a scheduler's SIGTERM the driver.
        # Ctrl-C exits 130; SIGTERM 143 (128 + 15), what schedulers read as "terminated".
        for signum, group, exit_code, error in (
            (signal.SIGINT, True, 130, "Interrupted"),
            (signal.SIGTERM, False, 143, "Terminated"),
        ):
            before = commits(out)
            driver = drivers.start(*command)
            wait_for(lambda before=before: commits(out) > before, 180, "a commit")
            drivers.signal_mid_run(driver, signum, out, group=group)
            code, _, stderr = drivers.wait(driver, 60)
            assert code == exit_code, stderr
            assert f"{error}: run " in stderr and "rerun the same command" in stderr
            run_id = re.search(r"run (\S+) interrupted", stderr).group(1)
            interrupted_runs.append(run_id)
            assert run_stats(out, run_id)["status"] == "interrupted"
            assert not (out / "_scorer" / "lock.json").exists(), "the lock was not released"
            assert not (out / "_scorer" / "tmp" / run_id).exists()
            assert_scores_whole(history, out)
        assert commits(out) < TOTAL_SHARDS, "the signals did not land mid-run"

        summary = score(str(history), str(out), **SLOW)
    assert summary.exit_code == 0
    assert summary.shards_skipped + summary.shards_committed == TOTAL_SHARDS
    assert summary.rows + summary.rows_skipped == 6_000
    assert_exactly_once(history, out)
    assert not watcher.bad
    statuses = {r["status"] for run in interrupted_runs for r in shard_stats(out, run)}
    assert "interrupted" in statuses


def test_an_interrupt_before_the_run_starts_is_exit_130_too(tmp_path, monkeypatch):
    history = make_history(tmp_path / "in", sessions=200, files=1, days=1)

    def interrupted_scan(context):
        raise KeyboardInterrupt  # as if Ctrl-C came during a long footer scan

    monkeypatch.setattr("scorer.pipeline.entry._scan", interrupted_scan)
    result = CliRunner().invoke(cli, ["score", str(history), str(tmp_path / "out")])
    assert result.exit_code == 130, result.output
    assert result.output.startswith("Interrupted: ") and "rerun the same command" in result.output
    assert not (tmp_path / "out").exists()


def test_a_sigterm_before_the_run_starts_is_exit_143_and_the_handler_is_put_back(
    tmp_path, monkeypatch
):
    history = make_history(tmp_path / "in", sessions=200, files=1, days=1)

    def terminated_scan(context):
        os.kill(os.getpid(), signal.SIGTERM)  # as if a scheduler stopped the job mid-scan
        raise AssertionError("SIGTERM did not interrupt the scan")

    monkeypatch.setattr("scorer.pipeline.entry._scan", terminated_scan)
    before = signal.getsignal(signal.SIGTERM)
    result = CliRunner().invoke(cli, ["score", str(history), str(tmp_path / "out")])
    assert result.exit_code == 143, result.output
    assert result.output.startswith("Terminated: ") and "rerun the same command" in result.output
    assert signal.getsignal(signal.SIGTERM) == before
    assert not (tmp_path / "out").exists()


def test_the_library_raises_interrupted_whatever_the_signal(tmp_path, monkeypatch):
    from scorer.errors import Interrupted, Terminated

    history = make_history(tmp_path / "in", sessions=200, files=1, days=1)

    def interrupted_scan(context):
        raise KeyboardInterrupt

    monkeypatch.setattr("scorer.pipeline.entry._scan", interrupted_scan)
    with pytest.raises(Interrupted) as caught:
        score(str(history), str(tmp_path / "out"))
    assert type(caught.value) is Interrupted and caught.value.exit_code == 130
    assert issubclass(Terminated, Interrupted) and Terminated.exit_code == 143


# -- broken input ------------------------------------------------------------------------------


@pytest.mark.usefixtures("ray_cluster")
def test_broken_files_fail_alone_and_the_rerun_after_repair_fills_in_only_them(tmp_path):
    history = make_history(tmp_path / "in", sessions=3_000, files=3, days=1, row_group_rows=500)
    day = next(history.iterdir())
    good, truncated, zeroed = (day / f"part-0000{i}.parquet" for i in range(3))
    originals = {path: path.read_bytes() for path in (truncated, zeroed)}
    truncate(truncated)
    zero_data_pages(zeroed)
    out = tmp_path / "out"
    command = ["score", str(history), str(out), "--shard-rows", "500", "--actors", "2"]

    result = CliRunner().invoke(cli, command)
    assert result.exit_code == 1, result.output
    assert "unreadable Parquet footer" in result.output
    for broken in (truncated, zeroed):
        assert f"FAILED {day.name}/{broken.name}" in result.output
        assert str(broken) in result.output
    run_id = re.search(r"run (\S+): failed", result.output).group(1)
    stats = shard_stats(out, run_id)
    failed = [r for r in stats if r["status"] == "failed"]
    assert {r["input_path"] for r in failed} == {str(truncated), str(zeroed)}
    for row in failed:
        assert row["error"].startswith(str(row["input_path"])), row["error"]
        assert row["attempt"] == 1  # bad data stays bad: not retried
    assert any("unreadable data" in r["error"] for r in failed)
    committed = [r for r in stats if r["status"] == "committed"]
    assert {r["input_path"] for r in committed} == {str(good)}
    assert sum(r["rows"] for r in committed) == 1_000

    for path, data in originals.items():
        path.write_bytes(data)
    repaired = score(str(history), str(out), shard_rows=500, actors=2)
    assert repaired.exit_code == 0
    stats = shard_stats(out, repaired.run_id)
    assert {r["input_path"] for r in stats if r["status"] == "skipped"} == {str(good)}
    rescored = {r["input_path"] for r in stats if r["status"] == "committed"}
    assert rescored == {str(truncated), str(zeroed)}
    assert repaired.rows == 2_000 and repaired.rows_skipped == 1_000
    assert_exactly_once(history, out)


@pytest.mark.usefixtures("ray_cluster")
def test_max_failed_shards_stops_dispatching(tmp_path):
    history = make_history(tmp_path / "in", sessions=2_000, files=2, days=1, row_group_rows=500)
    zero_data_pages(next(history.rglob("part-00000.parquet")))
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli,
        [
            "score",
            str(history),
            str(out),
            "--shard-rows",
            "500",
            "--actors",
            "1",
            "--max-failed-shards",
            "1",
        ],
    )
    assert result.exit_code == 1, result.output
    assert "--max-failed-shards" in result.output
    run_id = re.search(r"run (\S+): failed", result.output).group(1)
    stats = shard_stats(out, run_id)
    assert [r["status"] for r in stats] == ["failed"]  # 1 of 4 shards dispatched, none after
    assert commits(out) == 0


@pytest.mark.usefixtures("ray_cluster")
@pytest.mark.parametrize("column", ["month", "page_value"])  # a dictionary-read string, a number
def test_a_file_without_a_model_column_fails_alone_and_names_it(tmp_path, column):
    history = make_history(tmp_path / "in", sessions=400, files=2, days=1, row_group_rows=100)
    broken = sorted(history.rglob("*.parquet"))[0]
    pq.write_table(pq.read_table(broken).drop_columns([column]), broken)
    summary = score(str(history), str(tmp_path / "out"), actors=1)
    assert summary.exit_code == 1 and summary.rows == 200
    assert {f["input"] for f in summary.failures} == {str(broken)}
    for failure in summary.failures:
        assert failure["error"] == f"{broken}: missing column(s) {column}"


# -- preflight: the whole job is wrong, nothing is written -------------------------------------


def _history_without(tmp_path, column: str) -> Path:
    history = make_history(tmp_path / "in", sessions=400, files=2, days=1, row_group_rows=100)
    for path in history.rglob("*.parquet"):
        table = pq.read_table(path)
        pq.write_table(table.drop_columns([column]), path)
    return history


def _model_with_bad_checksum(tmp_path) -> Path:
    model = tmp_path / "model"
    shutil.copytree(default_model_dir(), model)
    data = bytearray((model / "model.onnx").read_bytes())
    data[-1] ^= 0xFF
    (model / "model.onnx").write_bytes(bytes(data))
    return model


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing-column", "'page_value' is in none of the 2 input file(s)"),
        ("output-inside-input", "is inside INPUT"),
        ("checksum", "ChecksumError"),
        ("no-input-files", "NoInputFilesError"),
    ],
)
def test_preflight_errors_exit_2_and_write_nothing(tmp_path, case, message):
    options: list[str] = []
    out = tmp_path / "out"
    if case == "missing-column":
        history = _history_without(tmp_path, "page_value")
    elif case == "no-input-files":
        history = tmp_path / "in"
        (history / "dt=2026-11-27").mkdir(parents=True)
    else:
        history = make_history(tmp_path / "in", sessions=400, files=1, days=1)
    if case == "output-inside-input":
        out = history / "scored"
    if case == "checksum":
        options = ["--model", str(_model_with_bad_checksum(tmp_path))]
    result = CliRunner().invoke(cli, ["score", str(history), str(out), *options])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert result.output.count("\n") == 1  # one line, no traceback
    assert not out.exists()


def _other_model(tmp_path) -> Path:
    """The bundled graph with another doc string: another sha256, another name."""
    import hashlib

    import onnx

    model = tmp_path / "other-model"
    shutil.copytree(default_model_dir(), model)
    graph = onnx.load(model / "model.onnx")
    graph.doc_string = "another model"
    onnx.save(graph, model / "model.onnx")
    card = json.loads((model / "model.json").read_text())
    card["name"], card["version"] = "intent-other", "9.9.9"
    card["sha256"] = hashlib.sha256((model / "model.onnx").read_bytes()).hexdigest()
    (model / "model.json").write_text(json.dumps(card))
    return model


@pytest.mark.usefixtures("ray_cluster")
def test_another_models_scores_are_refused_unless_overwrite(tmp_path):
    history = make_history(tmp_path / "in", sessions=1_000, files=2, days=1, row_group_rows=250)
    out = tmp_path / "out"
    other = score(str(history), str(out), model=str(_other_model(tmp_path)), actors=2)
    assert other.exit_code == 0

    refused = CliRunner().invoke(cli, ["score", str(history), str(out)])
    assert refused.exit_code == 2, refused.output
    assert "intent-other" in refused.output and "--overwrite" in refused.output
    assert ds.dataset(out / "scores").count_rows() == 1_000  # untouched

    replaced = CliRunner().invoke(
        cli, ["score", str(history), str(out), "--overwrite", "--actors", "2"]
    )
    assert replaced.exit_code == 0, replaced.output
    versions = ds.dataset(out / "scores").to_table(columns=["model_version"])["model_version"]
    assert set(versions.to_pylist()) == {load_model().card.version}
    assert_exactly_once(history, out)


# -- bad rows ----------------------------------------------------------------------------------

_BAD_VALUES = {  # what each kind of input can be corrupted with
    "float": ["null", "nan", "inf", "-inf", "below", "above"],
    "int": ["null", "below", "above"],
    "categorical": ["null", "unseen"],  # an unseen category is no error: scored, status ok
    "bool": ["null"],
}


@pytest.fixture(scope="module")
def model():
    return load_model()


def _corruptions(card) -> list[tuple[str, str]]:
    """(column, kind) pairs that make sense for the card's inputs."""
    pairs = []
    for spec in card.inputs:
        for kind in _BAD_VALUES["categorical" if spec.kind == "categorical" else spec.dtype]:
            if (kind == "below" and spec.min is None) or (kind == "above" and spec.max is None):
                continue
            pairs.append((spec.name, kind))
    return pairs


def _bad_value(spec, kind):
    if kind == "null":
        return None
    if kind in ("nan", "inf", "-inf"):
        return float(kind)
    if kind == "below":
        return spec.min - 1
    if kind == "above":
        return spec.max + 1
    return 9_999 if spec.dtype == "int" else "not-in-the-vocabulary"


def _expected_status(card, row: dict) -> str:
    """docs/output.md, written out independently of scorer.model.encode: the first failing column in the
    card's order; within a column missing, then not_finite, then out_of_range."""
    for spec in card.inputs:
        value = row[spec.name]
        if value is None:
            return f"missing:{spec.name}"
        if isinstance(value, float) and not math.isfinite(value):
            return f"not_finite:{spec.name}"
        below = spec.min is not None and value < spec.min
        above = spec.max is not None and value > spec.max
        if spec.kind == "numeric" and (below or above):
            return f"out_of_range:{spec.name}"
    return "ok"


def _corrupt(card, table: pa.Table, damage) -> pa.Table:
    rows = table.to_pylist()
    specs = {spec.name: spec for spec in card.inputs}
    for index, column, kind in damage:
        rows[index][column] = _bad_value(specs[column], kind)
    return pa.Table.from_pylist(rows, schema=table.schema)


@pytest.fixture(scope="module")
def clean_sessions(tmp_path_factory, model):
    history = make_history(tmp_path_factory.mktemp("clean"), sessions=40, files=1, days=1)
    table = pq.read_table(next(history.rglob("*.parquet")))
    assert set(model.score(table)["status"].to_pylist()) == {"ok"}
    return table


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_bad_values_keep_their_rows_with_the_right_status_and_null_scores(
    model, clean_sessions, data
):
    card, n = model.card, clean_sessions.num_rows
    damage = data.draw(
        st.lists(
            st.tuples(st.integers(0, n - 1), st.sampled_from(_corruptions(card))), max_size=3 * n
        )
    )
    table = _corrupt(card, clean_sessions, [(i, column, kind) for i, (column, kind) in damage])
    scored = model.score(table, key_column="session_id")
    assert scored.num_rows == n
    assert scored["session_id"].equals(table["session_id"])  # same rows, same order
    expected = [_expected_status(card, row) for row in table.to_pylist()]
    assert scored["status"].to_pylist() == expected
    invalid = [status != "ok" for status in expected]
    assert scored["intent_raw"].is_null().to_pylist() == invalid
    assert scored["intent_calibrated"].is_null().to_pylist() == invalid
    # A row nobody touched scores as it did clean: bad neighbours change nothing.
    clean = model.score(clean_sessions)
    for i in set(range(n)) - {i for i, _ in damage}:
        assert scored["intent_raw"][i].as_py() == clean["intent_raw"][i].as_py()


@pytest.mark.usefixtures("ray_cluster")
def test_bad_rows_through_the_actors_are_kept_and_counted(tmp_path, model):
    history = make_history(tmp_path / "in", sessions=2_000, files=1, days=1, row_group_rows=250)
    path = next(history.rglob("*.parquet"))
    pairs = _corruptions(model.card)
    damage = [(i, *pairs[(i // 7) % len(pairs)]) for i in range(0, 2_000, 7)]
    table = _corrupt(model.card, pq.read_table(path), damage)
    pq.write_table(table, path, row_group_size=250)
    out = tmp_path / "out"
    summary = score(str(history), str(out), shard_rows=1_000, actors=2)
    assert summary.exit_code == 0 and summary.rows == 2_000

    scored = ds.dataset(out / "scores").to_table().sort_by("session_id")
    rows = table.sort_by("session_id").to_pylist()
    expected = [_expected_status(model.card, row) for row in rows]
    assert scored["status"].to_pylist() == expected
    invalid = sum(status != "ok" for status in expected)
    assert invalid > 200 and scored["intent_raw"].null_count == invalid
    stats = shard_stats(out, summary.run_id)
    assert sum(r["rows_invalid"] for r in stats) == invalid
    assert sum(r["rows_ok"] for r in stats) == 2_000 - invalid
