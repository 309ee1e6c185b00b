"""Runs of small local files read by DuckDB (`pipeline.bulk`): the same rows and types as
pyarrow's reader, the planned version of every file or a named error, and the per-file reader
wherever DuckDB might differ or fails."""

from __future__ import annotations

import dataclasses
import json
import os

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from support.faults import zero_data_pages
from support.inputs import make_history, replace_with_a_new_version
from support.outputs import assert_exactly_once
from support.shards import shard_scorer

from scorer.errors import InputChangedError, ShardReadError
from scorer.model.runtime import load_model
from scorer.pipeline import bulk, reading
from scorer.pipeline.bulk import is_bulk_type, joins_run
from scorer.pipeline.entry import score
from scorer.pipeline.footers import footers_by_digest
from scorer.pipeline.packing import plan_shards
from scorer.pipeline.reading import BULK_FILES_PER_READ
from scorer.pipeline.scan import scan_inputs
from scorer.storage import resolve

# 150 files of 100 rows, one row group each, in one folder: one packed shard, three scans.
FILES = dict(sessions=15_000, files=150, days=1, row_group_rows=100)


@pytest.fixture(scope="module")
def model():
    return load_model()


@pytest.fixture
def scans(monkeypatch):
    """The runs of files DuckDB scanned, as lists of paths; every shard of these tests' 150
    files may be scanned (`reading.BULK_MIN_FILES` is 200)."""
    monkeypatch.setattr(reading, "BULK_MIN_FILES", 1)
    return _recorded_scans(monkeypatch)


def _recorded_scans(monkeypatch):
    scanned: list[list[str]] = []
    read = bulk.BulkReader.read

    def recorded(self, pieces, schema):
        scanned.append([p.input_path for p in pieces])
        return read(self, pieces, schema)

    monkeypatch.setattr(bulk.BulkReader, "read", recorded)
    return scanned


def _scorer(model, source, out, batch_rows=131_072, key_column=None):
    return shard_scorer(
        model, source, out, batch_rows=batch_rows, key_column=key_column, run_id="run-bulk"
    )


def _one_shard(source):
    (shard,) = plan_shards(scan_inputs(resolve(source)), 1_000_000).shards
    return shard


def _read(scorer, shard):
    source = scorer.open(shard, has_label=True)
    return source, list(scorer.batches(source, shard))


def _as_pyarrow_reads(model, shard, columns):
    return pa.concat_tables(
        [
            pq.read_table(
                p.input_path, columns=columns, read_dictionary=model.categorical_string_columns
            )
            for p in shard.pieces
        ]
    ).unify_dictionaries()


def _table(batches):
    tables = [b if isinstance(b, pa.Table) else pa.Table.from_batches([b]) for b in batches]
    return pa.concat_tables(tables).unify_dictionaries()


def _assert_same_rows(got, want):
    assert got.schema.equals(want.schema)  # dictionaries where pyarrow reads dictionaries
    for name in want.column_names:
        assert got[name].to_pylist() == want[name].to_pylist(), name


def test_a_packed_shard_of_small_files_comes_back_with_pyarrows_rows_and_types(
    model, tmp_path, scans
):
    source = make_history(tmp_path / "in", **FILES)
    scorer = _scorer(model, source, tmp_path / "out")
    shard = _one_shard(source)
    assert all(bulk.scannable(p) for p in shard.pieces)
    opened, batches = _read(scorer, shard)
    # The shard's first file (opened with the shard), then runs of 64 files from the second:
    # the first of each read by pyarrow, the others scanned (on the read-ahead threads).
    assert sorted(len(run) for run in scans) == [
        20,
        BULK_FILES_PER_READ - 1,
        BULK_FILES_PER_READ - 1,
    ]
    _assert_same_rows(_table(batches), _as_pyarrow_reads(model, shard, opened.columns))


def test_duckdb_starts_for_a_shard_of_many_files_and_then_scans_any(model, tmp_path, monkeypatch):
    """Its import and connection (~0.13 s) are what ~200 files' scans save: a quick first shard
    of a few dozen files is read by pyarrow alone."""
    scanned = _recorded_scans(monkeypatch)
    source = make_history(tmp_path / "in", **FILES)
    scorer = _scorer(model, source, tmp_path / "out")
    shard = _one_shard(source)
    assert shard.files < reading.BULK_MIN_FILES
    _, batches = _read(scorer, shard)
    assert scanned == [] and not scorer.bulk_reader.started
    assert sum(b.num_rows for b in batches) == 15_000
    monkeypatch.setattr(reading, "BULK_MIN_FILES", shard.files)  # as if this shard were bigger
    _read(scorer, shard)
    assert scanned and scorer.bulk_reader.started
    monkeypatch.undo()
    scanned = _recorded_scans(monkeypatch)
    _, batches = _read(scorer, shard)  # started: the same small shard is scanned now
    assert scanned
    assert sum(b.num_rows for b in batches) == 15_000


def test_a_scan_is_at_most_batch_rows_rows(model, tmp_path, scans):
    source = make_history(tmp_path / "in", **FILES)
    scorer = _scorer(model, source, tmp_path / "out", batch_rows=1_000)
    shard = _one_shard(source)
    _, batches = _read(scorer, shard)
    # Runs of 10 files of 100 rows (the first read by pyarrow) after the shard's first file.
    assert max(len(run) for run in scans) == 9
    assert max(b.num_rows for b in batches) <= 1_000
    assert sum(b.num_rows for b in batches) == 15_000


def test_a_large_string_key_comes_back_as_large_string(model, tmp_path, scans):
    source = make_history(tmp_path / "in", **FILES)
    for path in sorted(source.rglob("*.parquet")):
        table = pq.read_table(path)
        key = pc.cast(pc.cast(table["session_id"], pa.string()), pa.large_string())
        pq.write_table(table.append_column("visit", key), path)
    scorer = _scorer(model, source, tmp_path / "out", key_column="visit")
    # Strings are scanned where the plan's footers bound their decoded size (docs/limits.md).
    scorer.known_footers = footers_by_digest(scan_inputs(resolve(source)))
    shard = _one_shard(source)
    _, batches = _read(scorer, shard)
    assert scans
    assert {b.schema.field("visit").type for b in batches} == {pa.large_string()}
    got = _table(batches)["visit"].to_pylist()
    assert got == _as_pyarrow_reads(model, shard, ["visit"])["visit"].to_pylist()


def test_a_timestamp_key_keeps_the_per_file_reader(model, tmp_path, scans):
    source = make_history(tmp_path / "in", **FILES)
    for path in sorted(source.rglob("*.parquet")):
        table = pq.read_table(path)
        key = pc.cast(table["session_id"], pa.timestamp("us", tz="Europe/Paris"))
        pq.write_table(table.append_column("seen_at", key), path)
    scorer = _scorer(model, source, tmp_path / "out", key_column="seen_at")
    shard = _one_shard(source)
    _, batches = _read(scorer, shard)
    assert scans == []
    assert {b.schema.field("seen_at").type for b in batches} == {
        pa.timestamp("us", tz="Europe/Paris")
    }
    assert sum(b.num_rows for b in batches) == 15_000


def test_files_of_another_schema_are_not_scanned_with_the_first_files(model, tmp_path, scans):
    """DuckDB casts a later file's column to the first file's type: a file whose `page_value`
    is a float32 (values a double cannot equal) must not be scanned with files where it is a
    double, nor an int64 `admin_pages` with int32 ones."""
    source = make_history(tmp_path / "in", **FILES)
    paths = sorted(source.rglob("*.parquet"))
    for path, column, kind in (
        (paths[30], "page_value", pa.float32()),
        (paths[31], "admin_pages", pa.int64()),
    ):
        table = pq.read_table(path)
        index = table.schema.get_field_index(column)
        table = table.set_column(index, column, pc.cast(table[column], kind))
        pq.write_table(table, path)
    scorer = _scorer(model, source, tmp_path / "out")
    shard = _one_shard(source)
    tokens = {p.schema_token for p in shard.pieces}
    assert len(tokens) == 3
    assert not joins_run(shard.pieces[0], shard.pieces[30])
    _, batches = _read(scorer, shard)
    assert all(str(paths[30]) not in run and str(paths[31]) not in run for run in scans)
    scored = [scorer.score(shard, b, {"encode": 0.0, "infer": 0.0}) for b in batches]
    got = pa.concat_tables([s.table for s in scored]).sort_by("session_id")
    want = pa.concat_tables(
        [model.score(pq.read_table(p), key_column="session_id", run_id="x") for p in paths]
    ).sort_by("session_id")
    assert got["intent_raw"].to_pylist() == want["intent_raw"].to_pylist()


@pytest.mark.parametrize(
    "kind, scanned",
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
def test_only_types_duckdb_gives_back_alike_are_scanned(kind, scanned):
    assert is_bulk_type(kind) is scanned


def test_a_file_replaced_after_planning_is_named_before_its_runs_rows_are_handed_on(
    model, tmp_path, scans
):
    source = make_history(tmp_path / "in", **FILES)
    scorer = _scorer(model, source, tmp_path / "out", batch_rows=1_000)
    shard = _one_shard(source)
    victim = shard.pieces[35].input_path  # in the fourth run of ten files
    replace_with_a_new_version(source / shard.pieces[35].input_relpath)
    handed_on = 0
    with pytest.raises(InputChangedError, match="input changed during the run") as caught:
        for batch in scorer.batches(scorer.open(shard, has_label=True), shard):
            handed_on += batch.num_rows
    assert caught.value.input_path == victim
    # The shard's first file, then runs of ten: the victim's run (files 31-40) never came.
    assert handed_on <= 3_100
    assert any(victim in run for run in scans)  # the scan's check saw it


def test_a_file_touched_after_planning_is_a_change(model, tmp_path, scans):
    source = make_history(tmp_path / "in", **FILES)
    scorer = _scorer(model, source, tmp_path / "out")
    shard = _one_shard(source)
    victim = shard.pieces[3].input_path
    stat = os.stat(victim)
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    with pytest.raises(InputChangedError) as caught:
        _read(scorer, shard)
    assert caught.value.input_path == victim


def test_a_file_removed_after_planning_is_a_change(model, tmp_path, scans):
    source = make_history(tmp_path / "in", **FILES)
    scorer = _scorer(model, source, tmp_path / "out")
    shard = _one_shard(source)
    victim = shard.pieces[5].input_path
    os.remove(victim)
    with pytest.raises(InputChangedError, match="found no file") as caught:
        _read(scorer, shard)
    assert caught.value.input_path == victim


def test_a_file_changed_during_a_scan_is_named_and_none_of_the_scans_rows_come(
    model, tmp_path, monkeypatch
):
    source = make_history(tmp_path / "in", **FILES)
    scorer = _scorer(model, source, tmp_path / "out")
    shard = _one_shard(source)
    victim = shard.pieces[10]
    checked = bulk._checked_version

    def replaced_once_checked(piece):  # after the check before the scan: as if mid-scan
        version = checked(piece)
        if piece is victim:
            replace_with_a_new_version(source / piece.input_relpath)
        return version

    monkeypatch.setattr(bulk, "_checked_version", replaced_once_checked)
    with pytest.raises(InputChangedError, match="during a scan") as caught:
        scorer.bulk_reader.read(shard.pieces[1:20], pa.schema([("session_id", pa.int64())]))
    assert caught.value.input_path == victim.input_path


def test_a_poison_file_is_named_by_the_per_file_reader(model, tmp_path, scans):
    source = make_history(tmp_path / "in", **FILES)
    poison = sorted(source.rglob("*.parquet"))[27]  # in the third run of ten files
    zero_data_pages(poison)  # before planning: its footer plans, its pages are garbage
    scorer = _scorer(model, source, tmp_path / "out", batch_rows=1_000)
    shard = _one_shard(source)
    batches = scorer.batches(scorer.open(shard, has_label=True), shard)
    with pytest.raises(ShardReadError, match=r"part-00027\.parquet: unreadable data") as caught:
        list(batches)
    assert caught.value.input_path == str(poison)
    assert any(str(poison) in run for run in scans)  # DuckDB tried first


def test_a_scan_with_other_rows_than_planned_is_not_handed_on(model, tmp_path):
    source = make_history(tmp_path / "in", **FILES)
    scorer = _scorer(model, source, tmp_path / "out")
    pieces = list(_one_shard(source).pieces[1:10])
    pieces[3] = dataclasses.replace(pieces[3], rows=pieces[3].rows + 1)
    with pytest.raises(bulk.BulkReadFailed, match="DuckDB gave 900 rows, the plan has 901"):
        scorer.bulk_reader.read(pieces, pa.schema([("session_id", pa.int64())]))


def test_without_duckdb_the_per_file_reader_reads_every_file(model, tmp_path, scans, monkeypatch):
    """A cluster node whose environment lacks DuckDB: slower, never wrong, tried once."""
    attempts = []

    def missing():
        attempts.append(1)
        raise ImportError("No module named 'duckdb'")

    monkeypatch.setattr(bulk, "_connect", missing)
    source = make_history(tmp_path / "in", **FILES)
    scorer = _scorer(model, source, tmp_path / "out")
    shard = _one_shard(source)
    opened, batches = _read(scorer, shard)
    assert len(scans) == 3 and len(attempts) == 1
    _assert_same_rows(_table(batches), _as_pyarrow_reads(model, shard, opened.columns))


def test_paths_duckdb_would_glob_keep_the_per_file_reader(model, tmp_path, scans):
    source = make_history(tmp_path / "in", **FILES)
    for path in sorted(source.rglob("*.parquet")):  # part-00007.parquet → part[00007].parquet
        path.rename(path.with_name(path.name.replace("part-", "part[").replace(".", "].", 1)))
    scorer = _scorer(model, source, tmp_path / "out")
    shard = _one_shard(source)
    assert shard.files == 150 and "[" in shard.input_path
    _, batches = _read(scorer, shard)
    assert scans == []
    assert sum(b.num_rows for b in batches) == 15_000


def test_files_of_several_row_groups_keep_the_per_file_reader(model, tmp_path, scans):
    source = make_history(tmp_path / "in", **(FILES | {"row_group_rows": 50}))
    scorer = _scorer(model, source, tmp_path / "out")
    shard = _one_shard(source)
    _, batches = _read(scorer, shard)
    assert scans == []
    assert sum(b.num_rows for b in batches) == 15_000


def test_a_big_file_among_the_small_ones_breaks_the_runs_around_it(model, tmp_path, scans):
    source = make_history(tmp_path / "in", **FILES)
    day = next(source.iterdir())
    small = sorted(day.glob("*.parquet"))
    big = pa.concat_tables([pq.read_table(p) for p in small[40:60]])
    for path in small[40:60]:
        path.unlink()
    pq.write_table(big, small[40], row_group_size=500)  # 2,000 rows in 4 row groups
    scorer = _scorer(model, source, tmp_path / "out")
    shard = _one_shard(source)
    opened, batches = _read(scorer, shard)
    assert all(str(small[40]) not in run for run in scans)  # read by pyarrow, group by group
    assert any(str(small[39]) in run for run in scans)  # the run before it ends at it
    assert any(str(small[61]) in run for run in scans)  # and one starts after it
    _assert_same_rows(_table(batches), _as_pyarrow_reads(model, shard, opened.columns))


def test_the_command_as_typed_scores_each_file_as_the_model_does(model, tmp_path, drivers):
    """`scorer score IN OUT` in a process of its own (no Ray there: the in-process worker and a
    forked worker process), shards of `BULK_MIN_FILES` files: every row once, scored as the
    model scores each file read by pyarrow."""
    files = 2 * reading.BULK_MIN_FILES
    source = make_history(tmp_path / "in", sessions=25 * files, files=files, days=1)
    out = tmp_path / "out"
    code, stdout, stderr = drivers.wait(
        drivers.start(str(source), str(out), "--shard-rows", str(25 * files // 2), "--json"), 180
    )
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["rows"] == 25 * files and summary["executor"].startswith("in-process")
    assert_exactly_once(source, out)
    _assert_scored_as_the_model_does(model, source, out)


def test_a_poison_file_in_a_scanned_shard_fails_alone_and_the_rest_commits(tmp_path, drivers):
    """`scorer score IN OUT` as typed, shards of `BULK_MIN_FILES` one-row-group files (so runs
    of them are DuckDB scans in whichever process scores them): the scan of the poison file's
    run fails, the per-file reader names it, the shard is split around it, and every other
    file is scored in the same run; repaired, a rerun scores it alone."""
    files = 3 * reading.BULK_MIN_FILES
    source = make_history(tmp_path / "in", sessions=25 * files, files=files, days=1)
    paths = sorted(source.rglob("*.parquet"))
    assert len(paths) == files and pq.ParquetFile(paths[0]).metadata.num_row_groups == 1
    poison = paths[files - 100]  # mid-run in the last shard
    zero_data_pages(poison)
    out = tmp_path / "out"
    options = ["--shard-rows", str(25 * reading.BULK_MIN_FILES), "--json"]
    code, stdout, stderr = drivers.wait(drivers.start(str(source), str(out), *options), 180)
    assert code == 1, stderr
    summary = json.loads(stdout)
    assert [f["input"] for f in summary["failures"]] == [str(poison)]
    assert f"{poison}: unreadable data" in stderr
    assert summary["rows"] == 25 * (files - 1)

    pq.write_table(pq.read_table(paths[0]), poison)  # repaired: another file's 25 rows
    code, stdout, stderr = drivers.wait(drivers.start(str(source), str(out), *options), 180)
    assert code == 0, stderr
    rerun = json.loads(stdout)
    assert rerun["rows"] == 25 and rerun["shards_committed"] == 1
    got = ds.dataset(out / "scores").to_table(columns=["session_id"])["session_id"]
    assert len(got) == 25 * files  # the repaired file's keys are another file's: rows, not keys
    assert pc.count_distinct(got).as_py() == 25 * (files - 1)


@pytest.mark.usefixtures("ray_cluster")
def test_actors_scan_packed_shards_scoring_each_file_as_the_model_does(model, tmp_path):
    # Shards of `BULK_MIN_FILES` files: an actor, a process of Ray's, scans them.
    files = 2 * reading.BULK_MIN_FILES
    source = make_history(tmp_path / "in", sessions=25 * files, files=files, days=1)
    summary = score(str(source), str(tmp_path / "out"), actors=2, shard_rows=25 * files // 2)
    assert summary.executor == "ray" and summary.shards_committed == 2
    assert summary.rows == 25 * files
    assert_exactly_once(source, tmp_path / "out")
    _assert_scored_as_the_model_does(model, source, tmp_path / "out")


def _assert_scored_as_the_model_does(model, source, out):
    columns = ["session_id", "intent_raw", "intent_calibrated"]
    got = ds.dataset(out / "scores").to_table(columns=columns).sort_by("session_id")
    key = model.card.key_column
    want = pa.concat_tables(
        [
            model.score(pq.read_table(path), key_column=key, run_id="x").select(columns)
            for path in sorted(source.rglob("*.parquet"))
        ]
    ).sort_by("session_id")
    assert got.equals(want)
