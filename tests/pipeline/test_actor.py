"""The actor's per-shard work without Ray: `ShardScorer`'s stages and `stream_shard`'s overlap,
run in this process on a generated file written into a local layout."""

from __future__ import annotations

import asyncio
import dataclasses
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support.inputs import make_history
from support.shards import shard_scorer

from scorer.errors import InputChangedError, ShardReadError
from scorer.model.runtime import load_model
from scorer.pipeline.outcome import Identity
from scorer.pipeline.packing import plan_shards
from scorer.pipeline.scan import scan_inputs
from scorer.pipeline.shipping import load_shipped_model
from scorer.pipeline.stages import StageThreads, stream_shard
from scorer.pipeline.stats import STAGES
from scorer.storage import resolve

RUN_ID = "run-actor"
IDENTITY = Identity(actor_id="a1", node_id="n1", node_ip="127.0.0.1", pid=1)


@pytest.fixture(scope="module")
def model():
    return load_model()


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return make_history(tmp_path_factory.mktemp("actor") / "in", sessions=6_000, files=1, days=1)


def _scorer(model, source, out, *, batch_rows=700, keep=()):
    return shard_scorer(model, source, out, batch_rows=batch_rows, keep=keep, run_id=RUN_ID)


def _shards(source, shard_rows=4_000):
    return plan_shards(scan_inputs(resolve(source)), shard_rows).shards


def _stream(scorer, shard, has_label=True):
    threads = StageThreads.start()
    try:
        return asyncio.run(stream_shard(scorer, shard, has_label, threads, IDENTITY))
    finally:
        threads.shutdown()


def test_a_streamed_shard_is_the_model_s_scores_of_its_row_groups(model, source, tmp_path):
    scorer = _scorer(model, source, tmp_path / "out")
    shard = _shards(source)[0]
    outcome = _stream(scorer, shard)

    written = pq.read_table(scorer.settings.layout.temp_path_for(shard, RUN_ID))
    rows = pq.ParquetFile(shard.input_path).read_row_groups(list(shard.row_groups))
    expected = model.score(rows, key_column=model.card.key_column, run_id=RUN_ID)
    assert written.num_rows == shard.rows == outcome.rows  # rows out = rows in
    assert written.column_names == expected.column_names
    for name in ("intent_raw", "intent_calibrated"):
        np.testing.assert_array_equal(written[name].to_numpy(), expected[name].to_numpy())
    key = model.card.key_column
    assert written[key].to_pylist() == rows[key].to_pylist()  # input order kept
    assert (
        outcome.output_bytes
        == (tmp_path / "out" / "_scorer" / "tmp")
        .joinpath(RUN_ID, shard.output_relpath)
        .stat()
        .st_size
    )
    assert outcome.rows_ok + outcome.rows_invalid == outcome.rows
    assert set(outcome.seconds) == {*STAGES, "total", "cpu"}
    assert all(outcome.seconds[stage] >= 0 for stage in STAGES)
    assert (outcome.actor_id, outcome.pid) == ("a1", 1)
    assert outcome.started_at <= outcome.ended_at
    assert outcome.calibration is not None and outcome.calibration.rows == shard.rows


def test_an_unlabelled_stream_carries_no_calibration(model, source, tmp_path):
    outcome = _stream(_scorer(model, source, tmp_path), _shards(source)[0], has_label=False)
    assert outcome.calibration is None


def test_batches_are_at_most_batch_rows_within_each_row_group(model, source, tmp_path):
    scorer = _scorer(model, source, tmp_path, batch_rows=700)
    shard = _shards(source)[0]
    batches = list(scorer.batches(scorer.open(shard, has_label=True), shard))
    assert max(b.num_rows for b in batches) <= 700
    assert sum(b.num_rows for b in batches) == shard.rows
    # Row groups of 2,000 rows in batches of 700: 700, 700, 600 per row group.
    assert [b.num_rows for b in batches[:3]] == [700, 700, 600]


def test_a_file_of_one_row_group_is_streamed_in_batches_and_scored_once(model, tmp_path):
    # As pandas' to_parquet writes a small file: one row group, one shard, many batches.
    source = make_history(
        tmp_path / "in", sessions=300_000, files=1, days=1, row_group_rows=300_000
    )
    scorer = _scorer(model, source, tmp_path / "out", batch_rows=4_096)
    (shard,) = _shards(source, shard_rows=1_000_000)
    assert len(shard.row_groups) == 1
    opened = scorer.open(shard, has_label=True)
    assert opened.streamed  # pages read as needed, the group's column chunks not loaded whole
    sizes = [b.num_rows for b in scorer.batches(opened, shard)]
    assert len(sizes) > 1 and max(sizes) <= 4_096 and sum(sizes) == 300_000

    outcome = _stream(scorer, shard)
    written = pq.read_table(scorer.settings.layout.temp_path_for(shard, RUN_ID))
    key = model.card.key_column
    assert outcome.rows == written.num_rows == 300_000
    assert written[key].to_pylist() == pq.read_table(shard.input_path)[key].to_pylist()


def test_a_file_changed_after_planning_fails_as_input_changed_naming_both_versions(model, tmp_path):
    source = make_history(tmp_path / "in", sessions=4_000, files=1, days=1, row_group_rows=1_000)
    scorer = _scorer(model, source, tmp_path / "out")
    shard = _shards(source, shard_rows=2_000)[1]
    path = shard.input_path
    pq.write_table(pq.read_table(path).slice(0, 3_000), path, row_group_size=1_000)
    with pytest.raises(InputChangedError) as caught:
        scorer.open(shard, has_label=True)
    found = str(caught.value).rpartition("found ")[2].rstrip(")")
    assert str(caught.value).startswith(
        f"input changed during the run: {path} (planned {shard.fingerprint}, found "
    )
    assert found != shard.fingerprint and found.split("-")[0] != shard.fingerprint.split("-")[0]
    assert caught.value.input_path == path

    Path(path).unlink()
    with pytest.raises(InputChangedError, match=r"found no file\)$") as caught:
        scorer.open(shard, has_label=True)
    assert caught.value.input_path == path


def test_an_unchanged_file_opens_with_the_fingerprint_it_was_planned_with(model, source, tmp_path):
    scorer = _scorer(model, source, tmp_path)
    for shard in _shards(source):
        opened = scorer.open(shard, has_label=True)  # no InputChangedError: the same recipe
        piece = shard.pieces[0]
        # The planned version is open: its row groups hold the rows the plan counted in them,
        # and the columns read are the model's, the key and the label.
        metadata = opened.parquet.metadata
        assert sum(metadata.row_group(g).num_rows for g in piece.row_groups) == piece.rows
        assert set(opened.columns) == {
            *model.required_columns,
            model.card.key_column,
            model.card.label_column,
        }


def test_score_adds_its_stage_seconds(model, source, tmp_path):
    scorer = _scorer(model, source, tmp_path)
    shard = _shards(source)[0]
    batch = next(scorer.batches(scorer.open(shard, has_label=False), shard))
    seconds = dict.fromkeys(STAGES, 0.0)
    scored = scorer.score(shard, batch, seconds)
    assert scored.table.num_rows == batch.num_rows
    assert seconds["encode"] > 0 and seconds["infer"] > 0
    assert seconds["read"] == seconds["write"] == 0.0


def test_a_missing_column_fails_the_shard_naming_the_file(model, tmp_path):
    source = make_history(tmp_path / "in", sessions=2_000, files=1, days=1)
    path = next(source.rglob("*.parquet"))
    pq.write_table(pq.read_table(path).drop_columns(["page_value"]), path)
    scorer = _scorer(model, source, tmp_path / "out")
    shard = _shards(source)[0]
    with pytest.raises(ShardReadError, match=r"\.parquet: missing column\(s\) page_value"):
        scorer.open(shard, has_label=True)


def test_a_failed_stream_leaves_no_temporary_file(model, source, tmp_path):
    scorer = _scorer(model, source, tmp_path / "out")
    shard = _shards(source)[0]
    calls = {"n": 0}
    score = scorer.score

    def fails_on_the_third_batch(shard, batch, seconds):
        calls["n"] += 1
        if calls["n"] == 3:
            raise ShardReadError("boom")
        return score(shard, batch, seconds)

    scorer.score = fails_on_the_third_batch  # type: ignore[method-assign]
    with pytest.raises(ShardReadError, match="boom"):
        _stream(scorer, shard)
    assert not list((tmp_path / "out").rglob("*.parquet"))


def test_a_shard_of_empty_row_groups_writes_an_empty_file(model, tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    full = make_history(tmp_path / "full", sessions=1_000, files=1, days=1)
    table = pq.read_table(next(full.rglob("*.parquet"))).slice(0, 0)
    pq.write_table(table, source / "empty.parquet")
    scorer = _scorer(model, source, tmp_path / "out")
    (shard,) = _shards(source)
    outcome = _stream(scorer, shard)
    written = pq.read_table(scorer.settings.layout.temp_path_for(shard, RUN_ID))
    assert outcome.rows == written.num_rows == 0
    assert "intent_raw" in written.column_names
    assert written.schema.field("intent_raw").type == pa.float32()


def test_a_shipped_model_leaves_no_temporary_folder(model, source, tmp_path, monkeypatch):
    # An actor and a worker process load the model from the files their settings carry; the
    # folder those are written to went away with nothing (one was left per actor, ~4,000 here).
    from scorer.model.runtime import default_model_dir

    settings = _scorer(model, source, tmp_path / "out").settings
    files = {p.name: p.read_bytes() for p in default_model_dir().iterdir()}
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "temp"))
    (tmp_path / "temp").mkdir()
    shipped = load_shipped_model(dataclasses.replace(settings, model_files=files))
    assert shipped.card.sha256 == model.card.sha256
    assert list((tmp_path / "temp").iterdir()) == []
