"""Packed shards of small local files read by DuckDB (`pipeline.bulk`): the same rows and types
as pyarrow's reader, the planned version of every file or a named error, and the per-file
reader wherever DuckDB might differ or fails."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from conftest import make_history
from test_faults import _assert_exactly_once, _zero_data_pages
from test_input_changes import _replace_with_a_new_version

from scorer.errors import InputChangedError, ShardReadError
from scorer.model.runtime import load_model
from scorer.pipeline.actor import ActorSettings, ShardScorer
from scorer.pipeline.bulk import bulk_readable, file_groups, is_bulk_type
from scorer.pipeline.driver import score
from scorer.pipeline.layout import OutputLayout
from scorer.pipeline.plan import plan_shards, scan_inputs
from scorer.storage import resolve

# 40 files of 100 rows, each of 2 row groups, in one folder: one packed shard.
FILES = dict(sessions=4_000, files=40, days=1, row_group_rows=50)


@pytest.fixture(scope="module")
def model():
    return load_model()


def _scorer(model, source, out, batch_rows=1_000, key_column=None):
    settings = ActorSettings(
        model_files={},
        threads=1,
        batch_rows=batch_rows,
        key_column=key_column or model.card.key_column,
        keep=(),
        label_column=model.card.label_column,
        run_id="run-bulk",
        input_location=resolve(source),
        layout=OutputLayout(resolve(out)),
        bulk_reads=2,
    )
    return ShardScorer(settings, model)


def _one_shard(source):
    (shard,) = plan_shards(scan_inputs(resolve(source)), 1_000_000).shards
    return shard


def _read(scorer, shard):
    source = scorer.open(shard, has_label=True)
    return source, list(scorer.batches(source, shard))


def _as_pyarrow_reads(model, shard, columns):
    return [
        pq.read_table(
            p.input_path, columns=columns, read_dictionary=model.categorical_string_columns
        )
        for p in shard.pieces
    ]


def _tables(batches):
    return [b if isinstance(b, pa.Table) else pa.Table.from_batches([b]) for b in batches]


def test_a_packed_shard_of_small_files_comes_back_with_pyarrows_rows_and_types(model, tmp_path):
    source = make_history(tmp_path / "in", **FILES)
    scorer = _scorer(model, source, tmp_path / "out")
    shard = _one_shard(source)
    opened, batches = _read(scorer, shard)
    assert bulk_readable(shard, opened.parquet.schema_arrow, local=True)
    assert scorer._bulk_reader is not None  # DuckDB read it
    assert [b.num_rows for b in batches] == [1_000] * 4
    got = pa.concat_tables(_tables(batches)).unify_dictionaries()
    want = pa.concat_tables(_as_pyarrow_reads(model, shard, opened.columns)).unify_dictionaries()
    assert got.schema.equals(want.schema)  # dictionaries where pyarrow reads dictionaries
    for name in want.column_names:
        assert got[name].to_pylist() == want[name].to_pylist(), name


def test_no_batch_exceeds_batch_rows_when_a_file_does(model, tmp_path):
    source = make_history(tmp_path / "in", **FILES)
    scorer = _scorer(model, source, tmp_path / "out", batch_rows=60)
    shard = _one_shard(source)
    assert [len(group) for group in file_groups(shard.pieces, 60)] == [1] * 40
    _, batches = _read(scorer, shard)
    assert max(b.num_rows for b in batches) <= 60
    assert sum(b.num_rows for b in batches) == 4_000


def test_a_large_string_key_comes_back_as_large_string(model, tmp_path):
    source = make_history(tmp_path / "in", **FILES)
    for path in sorted(source.rglob("*.parquet")):
        table = pq.read_table(path)
        key = pc.cast(pc.cast(table["session_id"], pa.string()), pa.large_string())
        pq.write_table(table.append_column("visit", key), path, row_group_size=50)
    scorer = _scorer(model, source, tmp_path / "out", key_column="visit")
    shard = _one_shard(source)
    _, batches = _read(scorer, shard)
    assert scorer._bulk_reader is not None
    assert {b.schema.field("visit").type for b in batches} == {pa.large_string()}
    got = pa.concat_tables(_tables(batches))["visit"].to_pylist()
    want = pa.concat_tables(_as_pyarrow_reads(model, shard, ["visit"]))["visit"].to_pylist()
    assert got == want


def test_a_timestamp_key_keeps_the_per_file_reader(model, tmp_path):
    source = make_history(tmp_path / "in", **FILES)
    for path in sorted(source.rglob("*.parquet")):
        table = pq.read_table(path)
        key = pc.cast(table["session_id"], pa.timestamp("us", tz="Europe/Paris"))
        pq.write_table(table.append_column("seen_at", key), path, row_group_size=50)
    scorer = _scorer(model, source, tmp_path / "out", key_column="seen_at")
    shard = _one_shard(source)
    opened, batches = _read(scorer, shard)
    assert not bulk_readable(shard, opened.parquet.schema_arrow, local=True)
    assert scorer._bulk_reader is None
    assert {b.schema.field("seen_at").type for b in batches} == {
        pa.timestamp("us", tz="Europe/Paris")
    }
    assert sum(b.num_rows for b in batches) == 4_000


@pytest.mark.parametrize(
    "kind, bulk",
    [
        (pa.int8(), True),
        (pa.uint64(), True),
        (pa.float32(), True),
        (pa.bool_(), True),
        (pa.large_string(), True),
        (pa.date32(), True),
        (pa.dictionary(pa.int32(), pa.string()), True),
        (pa.float16(), False),
        (pa.timestamp("ms"), False),
        (pa.decimal128(10, 2), False),
        (pa.binary(), False),
        (pa.list_(pa.int64()), False),
        (pa.dictionary(pa.int32(), pa.int64()), False),
    ],
)
def test_only_types_duckdb_gives_back_alike_are_read_in_bulk(kind, bulk):
    assert is_bulk_type(kind) is bulk


def test_a_file_replaced_after_planning_is_named_before_its_groups_rows_are_handed_on(
    model, tmp_path
):
    source = make_history(tmp_path / "in", **FILES)
    scorer = _scorer(model, source, tmp_path / "out")
    shard = _one_shard(source)
    # In the fourth group of ten files: a batch is handed on once the next one is read.
    victim = shard.pieces[35].input_path
    _replace_with_a_new_version(source / shard.pieces[35].input_relpath)
    source_file = scorer.open(shard, has_label=True)
    batches = scorer.batches(source_file, shard)
    assert [next(batches).num_rows for _ in range(2)] == [1_000, 1_000]
    with pytest.raises(InputChangedError, match="input changed during the run") as caught:
        next(batches)
    assert caught.value.input_path == victim


def test_a_file_touched_after_planning_is_a_change(model, tmp_path):
    source = make_history(tmp_path / "in", **FILES)
    scorer = _scorer(model, source, tmp_path / "out")
    shard = _one_shard(source)
    victim = shard.pieces[3].input_path
    stat = os.stat(victim)
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    with pytest.raises(InputChangedError) as caught:
        _read(scorer, shard)
    assert caught.value.input_path == victim


def test_a_poison_file_is_named_by_the_per_file_reader(model, tmp_path):
    source = make_history(tmp_path / "in", **FILES)
    poison = sorted(source.rglob("*.parquet"))[27]  # in the third group of ten files
    _zero_data_pages(poison)  # before planning: its footer plans, its pages are garbage
    scorer = _scorer(model, source, tmp_path / "out")
    shard = _one_shard(source)
    batches = scorer.batches(scorer.open(shard, has_label=True), shard)
    assert next(batches).num_rows == 1_000  # the first group, read in bulk
    with pytest.raises(ShardReadError, match=r"part-00027\.parquet: unreadable data") as caught:
        list(batches)
    assert caught.value.input_path == str(poison)


def test_paths_duckdb_would_glob_keep_the_per_file_reader(model, tmp_path):
    source = make_history(tmp_path / "in", **FILES)
    for path in sorted(source.rglob("*.parquet")):  # part-00007.parquet → part[00007].parquet
        path.rename(path.with_name(path.name.replace("part-", "part[").replace(".", "].", 1)))
    scorer = _scorer(model, source, tmp_path / "out")
    shard = _one_shard(source)
    assert shard.files == 40 and "[" in shard.input_path
    opened, batches = _read(scorer, shard)
    assert not bulk_readable(shard, opened.parquet.schema_arrow, local=True)
    assert sum(b.num_rows for b in batches) == 4_000


@pytest.mark.usefixtures("ray_cluster")
def test_actors_read_packed_shards_in_bulk_scoring_each_file_as_the_model_does(model, tmp_path):
    source = make_history(tmp_path / "in", **FILES)
    summary = score(str(source), str(tmp_path / "out"), actors=2, shard_rows=1_000)
    assert summary.executor == "ray" and summary.shards_committed == 4
    assert summary.rows == 4_000
    _assert_exactly_once(source, tmp_path / "out")
    columns = ["session_id", "intent_raw", "intent_calibrated"]
    got = ds.dataset(tmp_path / "out" / "scores").to_table(columns=columns).sort_by("session_id")
    key = model.card.key_column
    want = pa.concat_tables(
        [
            model.score(pq.read_table(path), key_column=key, run_id="x").select(columns)
            for path in sorted(source.rglob("*.parquet"))
        ]
    ).sort_by("session_id")
    assert got.equals(want)
