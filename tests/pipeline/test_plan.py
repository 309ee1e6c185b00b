"""Planning from footers: discovery, hive partitions and filters, failed footers, shard sizes,
reuse of committed boundaries."""

from __future__ import annotations

import json
import os
from datetime import date

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.inputs import synthetic

from scorer.errors import ConfigError, NoInputFilesError, PreflightError
from scorer.partitions import PartitionFilter
from scorer.pipeline import scan as scan_module
from scorer.pipeline.footers import FOOTER_TAIL_BYTES, adopt_legacy, legacy_fingerprint
from scorer.pipeline.packing import plan_shards, with_quick_head
from scorer.pipeline.plan import FailedInput, InputFile
from scorer.pipeline.scan import scan_inputs
from scorer.storage import resolve


def write_sessions(path, rows, row_group_size, start=0):
    """A small session-like Parquet file with ``ceil(rows / row_group_size)`` row groups."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "session_id": pa.array(range(start, start + rows), pa.int64()),
            "page_value": pa.array([float(i % 7) for i in range(rows)]),
        }
    )
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def relpaths(inputs):
    return [i.relpath for i in inputs]


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "sessions"
    for day in ("2026-11-26", "2026-11-27", "2026-11-28"):
        for region in ("eu", "us"):
            write_sessions(root / f"dt={day}" / f"region={region}" / "part-0.parquet", 10, 5)
    write_sessions(root / "undated" / "part-0.parquet", 10, 5)
    # Everything below must be ignored: internal, hidden, marker and non-Parquet files.
    write_sessions(root / "_scorer" / "tmp" / "x.parquet", 10, 5)
    write_sessions(root / ".staging" / "x.parquet", 10, 5)
    write_sessions(root / "dt=2026-11-26" / "_tmp.parquet", 10, 5)
    (root / "_SUCCESS").write_text("")
    (root / "notes.txt").write_text("not data")
    return root


def test_discovers_sorted_parquet_files_with_partitions(tree):
    inputs = scan_inputs(resolve(tree))
    assert relpaths(inputs) == [
        "dt=2026-11-26/region=eu/part-0.parquet",
        "dt=2026-11-26/region=us/part-0.parquet",
        "dt=2026-11-27/region=eu/part-0.parquet",
        "dt=2026-11-27/region=us/part-0.parquet",
        "dt=2026-11-28/region=eu/part-0.parquet",
        "dt=2026-11-28/region=us/part-0.parquet",
        "undated/part-0.parquet",
    ]
    first = inputs[0]
    assert first.partition == (("dt", "2026-11-26"), ("region", "eu"))
    assert first.folder == "dt=2026-11-26/region=eu" and first.stem == "part-0"
    assert first.path == str(tree / first.relpath)
    assert inputs[-1].partition == ()


@pytest.mark.parametrize(
    "partitions, since, until, expected",
    [
        ((), None, None, 7),
        (("region=eu",), None, None, 3),
        (("region=eu", "region=us"), None, None, 6),
        (("region=eu", "dt=2026-11-27"), None, None, 1),
        ((), "2026-11-27", None, 4),
        ((), None, "2026-11-27", 4),
        ((), "2026-11-27", "2026-11-27", 2),
        (("region=us",), "2026-11-28", "2026-12-31", 1),
    ],
)
def test_partition_and_date_filters(tree, partitions, since, until, expected):
    selection = PartitionFilter.parse(partitions, since, until)
    inputs = scan_inputs(resolve(tree), selection)
    assert len(inputs) == expected
    if since or until:
        assert all("undated" not in i.relpath for i in inputs)
    for item in inputs:
        values = dict(item.partition)
        for text in partitions:
            key = text.split("=")[0]
            assert f"{key}={values[key]}" in partitions


def test_partition_folder_as_input_keeps_its_partition(tree):
    day = scan_inputs(resolve(tree / "dt=2026-11-27"))
    assert relpaths(day) == [
        "dt=2026-11-27/region=eu/part-0.parquet",
        "dt=2026-11-27/region=us/part-0.parquet",
    ]
    single = scan_inputs(resolve(tree / "dt=2026-11-27" / "region=us" / "part-0.parquet"))
    assert relpaths(single) == ["dt=2026-11-27/region=us/part-0.parquet"]
    assert single[0].partition == (("dt", "2026-11-27"), ("region", "us"))
    # Selection applies to the partition folders above a single file too.
    assert scan_inputs(resolve(single[0].path), PartitionFilter.parse(since="2026-11-27"))


@pytest.mark.parametrize(
    "partitions, since, until, message",
    [
        (("dt",), None, None, "--partition 'dt'"),
        (("=x",), None, None, "KEY=VALUE"),
        ((), "yesterday", None, "--since 'yesterday'"),
        ((), None, "2026-13-01", "--until"),
        ((), "2026-11-28", "2026-11-27", "after --until"),
    ],
)
def test_bad_filter_options_name_the_option(partitions, since, until, message):
    with pytest.raises(ConfigError, match=message):
        PartitionFilter.parse(partitions, since, until)


def test_filter_accepts_dates():
    selection = PartitionFilter.parse(since=date(2026, 1, 1))
    assert selection.since == date(2026, 1, 1) and selection


def test_dt_that_is_not_a_date_cannot_be_selected_by_date(tmp_path):
    write_sessions(tmp_path / "dt=latest" / "a.parquet", 4, 2)
    assert scan_inputs(resolve(tmp_path))  # without --since/--until it is an ordinary partition
    with pytest.raises(PreflightError, match="dt='latest'.*not an ISO date"):
        scan_inputs(resolve(tmp_path), PartitionFilter.parse(since="2026-01-01"))


def test_no_input_files_is_an_error_naming_input(tmp_path):
    with pytest.raises(NoInputFilesError, match="no such file"):
        scan_inputs(resolve(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoInputFilesError, match=str(tmp_path / "empty")):
        scan_inputs(resolve(tmp_path / "empty"))
    write_sessions(tmp_path / "dt=2026-01-01" / "a.parquet", 4, 2)
    with pytest.raises(NoInputFilesError, match="selected by --since 2027-01-01"):
        scan_inputs(resolve(tmp_path), PartitionFilter.parse(since="2027-01-01"))


def test_footer_facts_and_fingerprint(tmp_path):
    path = write_sessions(tmp_path / "a.parquet", 23, 10)
    (item,) = scan_inputs(resolve(tmp_path))
    assert item.row_group_rows == (10, 10, 3)
    assert item.rows == 23
    meta = pq.read_metadata(path)
    assert item.row_group_bytes[0] == sum(
        meta.row_group(0).column(j).total_compressed_size for j in range(meta.num_columns)
    )
    assert item.size == os.path.getsize(path)
    assert item.schema.names == ["session_id", "page_value"]
    assert scan_inputs(resolve(tmp_path))[0].fingerprint == item.fingerprint

    write_sessions(path, 23, 5)  # same rows, other row groups: another file
    assert scan_inputs(resolve(tmp_path))[0].fingerprint != item.fingerprint


def test_a_footer_longer_than_one_tail_read_is_read_whole(tmp_path):
    # 3,000 columns: a footer of several hundred KB, more than `FOOTER_TAIL_BYTES`.
    table = pa.table({f"c{i}": pa.array([i, i + 1], pa.int64()) for i in range(3000)})
    pq.write_table(table, tmp_path / "wide.parquet")
    assert pq.read_metadata(tmp_path / "wide.parquet").serialized_size > FOOTER_TAIL_BYTES
    (item,) = scan_inputs(resolve(tmp_path))
    assert isinstance(item, InputFile) and item.rows == 2 and len(item.schema) == 3000
    assert scan_inputs(resolve(tmp_path))[0].fingerprint == item.fingerprint


def test_files_with_one_schema_share_its_arrow_schema_and_others_keep_theirs(tmp_path):
    write_sessions(tmp_path / "a.parquet", 4, 2)
    write_sessions(tmp_path / "b.parquet", 4, 2)
    pq.write_table(pa.table({"session_id": pa.array([1], pa.int32())}), tmp_path / "c.parquet")
    a, b, c = scan_inputs(resolve(tmp_path))
    assert a.schema is b.schema
    assert c.schema == pa.schema([("session_id", pa.int32())])


def test_unreadable_footer_is_a_failed_item_not_a_failed_plan(tmp_path):
    good = write_sessions(tmp_path / "a.parquet", 20, 10)
    bad = write_sessions(tmp_path / "b.parquet", 20, 10)
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])  # truncated: the footer is gone
    (tmp_path / "c.parquet").write_bytes(b"")

    inputs = scan_inputs(resolve(tmp_path))
    assert [type(i) for i in inputs] == [InputFile, FailedInput, FailedInput]
    failed = inputs[1]
    assert failed.path == str(bad) and failed.shard_id == "b.parquet"
    assert "unreadable Parquet footer" in failed.reason

    plan = plan_shards(inputs, 100)
    assert [f.relpath for f in plan.failed] == ["b.parquet", "c.parquet"]
    assert [s.input_path for s in plan.shards] == [str(good)]
    assert "b.parquet: FAILED unreadable Parquet footer" in plan.describe()


def _many_files(root, count=30):
    for n in range(count):
        write_sessions(root / f"dt=2026-11-{26 + n % 2}" / f"part-{n:03d}.parquet", 6, 3, 10 * n)
    bad = root / "dt=2026-11-27" / "part-025.parquet"  # in the last process's files
    bad.write_bytes(bad.read_bytes()[:40])
    return bad


def test_footers_read_by_forked_processes_plan_as_those_read_here(tmp_path, monkeypatch):
    bad = _many_files(tmp_path)
    here = scan_inputs(resolve(tmp_path))
    monkeypatch.setattr(scan_module, "PROCESS_SCAN_MIN_FILES", 10)
    forked = scan_inputs(resolve(tmp_path), processes=3)
    assert forked == here  # fingerprints, row groups, sizes, partitions, failed items
    assert [type(i) for i in forked].count(FailedInput) == 1
    failed = next(i for i in forked if isinstance(i, FailedInput))
    assert failed.path == str(bad) and "unreadable Parquet footer" in failed.reason
    readable = [i for i in forked if isinstance(i, InputFile)]
    before = [i for i in here if isinstance(i, InputFile)]
    assert all(a.schema.equals(b.schema) for a, b in zip(readable, before, strict=True))
    # The first third were read here and keep their parsed footers; the others come without.
    assert [i.footer is not None for i in readable] == [True] * 10 + [False] * 19
    assert plan_shards(forked, 12).to_dict() == plan_shards(here, 12).to_dict()


def test_files_of_one_schema_share_one_schema_object_whichever_process_read_them(
    tmp_path, monkeypatch
):
    """What `preflight.first_file_per_schema` and `Piece.schema_token` rely on."""
    _many_files(tmp_path)
    odd = tmp_path / "dt=2026-11-27" / "part-027.parquet"  # in the last process's files
    table = pq.read_table(odd)
    pq.write_table(table.set_column(0, "session_id", table["session_id"].cast("int32")), odd)
    monkeypatch.setattr(scan_module, "PROCESS_SCAN_MIN_FILES", 10)
    readable = [i for i in scan_inputs(resolve(tmp_path), processes=3) if isinstance(i, InputFile)]
    assert readable[-1].footer is None  # read by a forked process
    objects = {id(i.schema) for i in readable}
    assert len(objects) == 2
    assert {id(i.schema) for i in readable if i.path != str(odd)} == {id(readable[0].schema)}
    plan = plan_shards(readable, 1_000)
    tokens = {p.input_path: p.schema_token for s in plan.shards for p in s.pieces}
    assert len(set(tokens.values())) == 2 and tokens[str(odd)] != tokens[readable[0].path]
    assert all(p.whole_file for s in plan.shards for p in s.pieces)


def test_a_piece_of_part_of_a_file_is_not_whole(tmp_path):
    write_sessions(tmp_path / "a.parquet", 30, 10)
    plan = plan_shards(scan_inputs(resolve(tmp_path)), 10)
    assert [p.whole_file for s in plan.shards for p in s.pieces] == [False] * 3
    assert plan_shards(scan_inputs(resolve(tmp_path)), 30).shards[0].pieces[0].whole_file


def test_few_files_are_read_here_whatever_the_processes(tmp_path):
    _many_files(tmp_path)
    assert all(
        i.footer is not None
        for i in scan_inputs(resolve(tmp_path), processes=4)
        if isinstance(i, InputFile)
    )


def test_a_legacy_record_is_adopted_for_a_file_a_forked_process_read(tmp_path, monkeypatch):
    _many_files(tmp_path)
    monkeypatch.setattr(scan_module, "PROCESS_SCAN_MIN_FILES", 10)
    last = [i for i in scan_inputs(resolve(tmp_path), processes=3) if isinstance(i, InputFile)][-1]
    assert last.footer is None
    recorded = legacy_fingerprint(last.size, last.mtime_ns, pq.read_metadata(last.path))
    assert adopt_legacy(last, recorded)
    assert not adopt_legacy(last, f"{last.size}-{last.mtime_ns}-0123456789abcdef")


@pytest.mark.parametrize(
    "rg_rows, shard_rows, expected",
    [
        ([10] * 10, 25, [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]),
        ([10] * 10, 30, [(0, 3), (3, 6), (6, 9), (9, 10)]),
        ([10] * 3, 1000, [(0, 3)]),
        ([10] * 3, 1, [(0, 1), (1, 2), (2, 3)]),
        ([5, 50, 5, 5], 20, [(0, 1), (1, 2), (2, 4)]),  # a large row group is its own shard
        ([0, 10, 0], 10, [(0, 3)]),
        ([], 10, []),
    ],
)
def test_shards_split_on_row_group_boundaries(rg_rows, shard_rows, expected):
    plan = plan_shards([synthetic("a.parquet", rg_rows)], shard_rows)
    assert [(s.rg_start, s.rg_stop) for s in plan.shards] == expected
    assert plan.rows == sum(rg_rows)


def test_shard_identity_and_output_names(tmp_path):
    write_sessions(tmp_path / "dt=2026-11-27" / "part-0.parquet", 30, 10)
    (shard, *_) = plan_shards(scan_inputs(resolve(tmp_path)), 20).shards
    assert shard.shard_id == "dt=2026-11-27/part-0.parquet:0-2"
    assert shard.output_relpath == "scores/dt=2026-11-27/part-0-rg00000-00002.parquet"
    assert shard.partition == (("dt", "2026-11-27"),)
    assert shard.rows == 20 and shard.row_groups == range(0, 2)
    top = plan_shards([synthetic("x.parquet", [1])], 5).shards[0]
    assert top.output_relpath == "scores/x-rg00000-00001.parquet"


def test_committed_boundaries_are_kept_when_shard_rows_changes():
    f = synthetic("a.parquet", [10] * 10)
    first = plan_shards([f], 30)
    committed = {"a.parquet": [(s.rg_start, s.rg_stop) for s in first.shards[:2]]}  # [0,3) [3,6)
    second = plan_shards([f], 20, committed)
    assert [(s.rg_start, s.rg_stop) for s in second.skipped] == [(0, 3), (3, 6)]
    assert [(s.rg_start, s.rg_stop) for s in second.shards] == [(6, 8), (8, 10)]
    assert second.skipped_rows + second.rows == 100


def test_committed_ranges_in_the_middle_leave_gaps_on_both_sides():
    plan = plan_shards([synthetic("a.parquet", [10] * 10)], 40, {"a.parquet": [(4, 6)]})
    assert [(s.rg_start, s.rg_stop) for s in plan.shards] == [(0, 4), (6, 10)]


@pytest.mark.parametrize("ranges", [[(0, 3), (2, 4)], [(0, 11)], [(3, 3)]])
def test_inconsistent_committed_ranges_are_refused(ranges):
    with pytest.raises(ValueError, match="a.parquet"):
        plan_shards([synthetic("a.parquet", [10] * 10)], 20, {"a.parquet": ranges})


def test_bad_shard_rows():
    with pytest.raises(ConfigError, match="--shard-rows"):
        plan_shards([synthetic("a.parquet", [1])], 0)


@given(
    rg_rows=st.lists(st.integers(0, 300), max_size=40),
    first_rows=st.integers(1, 500),
    second_rows=st.integers(1, 500),
    keep=st.lists(st.booleans(), max_size=40),
)
def test_every_row_group_is_planned_exactly_once(rg_rows, first_rows, second_rows, keep):
    f = synthetic("a.parquet", rg_rows)
    first = plan_shards([f], first_rows).shards
    for s in first:
        assert s.rows <= first_rows or s.rg_stop - s.rg_start == 1
    committed = [(s.rg_start, s.rg_stop) for s, k in zip(first, keep) if k]
    second = plan_shards([f], second_rows, {"a.parquet": committed})
    covered = sorted(g for s in (*second.shards, *second.skipped) for g in s.row_groups)
    assert covered == list(range(len(rg_rows)))
    assert [(s.rg_start, s.rg_stop) for s in second.skipped] == committed
    assert second.rows + second.skipped_rows == sum(rg_rows)


def _rows_below(limit):
    return lambda rows, files: rows <= limit


def test_the_first_shard_is_cut_to_a_quick_head_and_the_others_keep_their_names():
    files = [synthetic(f"p-{i}.parquet", [10]) for i in range(6)] + [
        synthetic("q.parquet", [10] * 4)
    ]
    plan = plan_shards(files, 40)
    cut = with_quick_head(plan, _rows_below(20))
    assert [[p.piece_id for p in s.pieces] for s in cut.shards[:2]] == [
        ["p-0.parquet:0-1", "p-1.parquet:0-1"],
        ["p-2.parquet:0-1", "p-3.parquet:0-1"],
    ]
    assert cut.shards[2:] == plan.shards[1:]
    assert cut.rows == plan.rows and with_quick_head(plan, _rows_below(20)) == cut


def test_a_head_cut_inside_a_file_splits_it_on_a_row_group_boundary():
    plan = plan_shards([synthetic("a.parquet", [10] * 10)], 60)
    cut = with_quick_head(plan, _rows_below(25))
    assert [(s.rg_start, s.rg_stop) for s in cut.shards] == [(0, 2), (2, 6), (6, 10)]
    assert cut.shards[0].shard_id == "a.parquet:0-2"


def test_a_head_is_one_row_group_at_least_and_a_quick_first_shard_is_kept():
    plan = plan_shards([synthetic("a.parquet", [50, 10]), synthetic("b.parquet", [10])], 100)
    never = with_quick_head(plan, lambda rows, files: False)
    assert [[p.piece_id for p in s.pieces] for s in never.shards] == [
        ["a.parquet:0-1"],
        ["a.parquet:1-2", "b.parquet:0-1"],
    ]
    assert with_quick_head(plan, _rows_below(1_000)) == plan
    assert with_quick_head(plan_shards([], 10), _rows_below(1)).shards == ()


def test_a_head_counts_files_as_well_as_rows():
    plan = plan_shards([synthetic(f"p-{i}.parquet", [1]) for i in range(10)], 100)
    cut = with_quick_head(plan, lambda rows, files: files <= 3)
    assert [len(s.pieces) for s in cut.shards] == [3, 7]


def test_plan_summary_is_json_and_text(tmp_path):
    write_sessions(tmp_path / "a.parquet", 25, 10)
    write_sessions(tmp_path / "b.parquet", 5, 10)
    inputs = scan_inputs(resolve(tmp_path))
    plan = plan_shards(inputs, 20, {"a.parquet": [(0, 2)]})
    summary = json.loads(json.dumps(plan.to_dict()))
    assert summary["totals"] == {
        "files": 2,
        "failed_files": 0,
        "shards": 1,  # a's last row group and b, packed: one folder, 10 rows
        "rows": 10,
        "bytes": plan.bytes,
        "skipped_shards": 1,
        "skipped_rows": 20,
        "skipped_bytes": plan.skipped_bytes,
    }
    assert summary["skipped"][0]["shard_id"] == "a.parquet:0-2"
    text = plan.describe()
    assert "to score: 1 shards, 10 rows" in text and "1 of them packing several files" in text
    assert "to skip (already committed): 1 shards, 20 rows" in text
    assert "a.parquet: 25 rows in 3 row groups, 1 shards to score, 1 to skip" in text
    assert "b.parquet: 5 rows in 1 row groups, 1 shards to score, 0 to skip" in text
    assert [p["input_relpath"] for p in summary["shards"][0]["pieces"]] == [
        "a.parquet",
        "b.parquet",
    ]
