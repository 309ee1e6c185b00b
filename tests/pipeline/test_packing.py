"""Shards that pack small files (issue 11): planning, commit records of several files, the actor
reading and coalescing them, a poison file failing alone, and old records still resuming.

Whole runs start `scorer score` as a process of its own (no Ray connected there, so it scores
in-process, as a user's run of this size would), as test_in_process does.
"""

from __future__ import annotations

import json
import re
import signal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.faults import wait_for, zero_data_pages
from support.inputs import make_history, replace_with_a_new_version, synthetic
from support.outputs import assert_exactly_once, commits, shard_stats
from support.shards import shard_scorer

from scorer.errors import ShardReadError
from scorer.model.runtime import load_model
from scorer.pipeline.manifest import CommitRecord, Manifest
from scorer.pipeline.packing import plan_shards, split_off
from scorer.pipeline.retry import local_failure
from scorer.pipeline.scan import scan_inputs
from scorer.storage import resolve

# 60 files of 100 rows (2 row groups of 50) over 2 days; 1,000-row shards: 3 of 10 files a day.
SMALL_FILES = dict(sessions=6_000, files=60, days=2, row_group_rows=50)
PACKED = ["--shard-rows", "1000", "--batch-rows", "300"]
PACKED_SHARDS = 6


def _run(drivers, *args, code=0):
    got, stdout, stderr = drivers.wait(drivers.start(*map(str, args), "--json"), 180)
    assert got == code, stderr
    return json.loads(stdout), stderr


def _pieces(shard):
    return [(p.input_relpath, p.rg_start, p.rg_stop) for p in shard.pieces]


# -- planning (pure) -----------------------------------------------------------------------------


def test_small_files_of_one_folder_are_packed_in_relpath_order():
    files = [synthetic(f"dt=1/f{i}.parquet", [10, 10]) for i in (2, 0, 1)]
    files += [synthetic("dt=2/g.parquet", [10])]
    plan = plan_shards(files, 50)
    assert [_pieces(s) for s in plan.shards] == [
        [("dt=1/f0.parquet", 0, 2), ("dt=1/f1.parquet", 0, 2), ("dt=1/f2.parquet", 0, 1)],
        [("dt=1/f2.parquet", 1, 2)],
        [("dt=2/g.parquet", 0, 1)],  # another folder never shares a shard
    ]
    first = plan.shards[0]
    assert first.rows == 50 and first.files == 3
    assert first.input_relpath == "dt=1/f0.parquet" and first.row_groups == range(0, 2)
    assert re.fullmatch(r"dt=1/f0\.parquet:0-2\+2:[0-9a-f]{12}", first.shard_id)
    assert re.fullmatch(
        r"scores/dt=1/f0-rg00000-00002-and-2-more-[0-9a-f]{12}\.parquet", first.output_relpath
    )
    assert first.shard_id.rpartition(":")[2] in first.output_relpath
    # One piece: the name it always had.
    assert plan.shards[1].shard_id == "dt=1/f2.parquet:1-2"
    assert plan.shards[1].output_relpath == "scores/dt=1/f2-rg00001-00002.parquet"
    assert plan_shards(files, 50).shards == plan.shards  # stable: derived from the pieces alone


def test_big_row_groups_and_big_files_keep_their_boundaries_among_small_files():
    files = [
        synthetic("a.parquet", [5]),
        synthetic("b.parquet", [100]),  # a row group above shard_rows: a shard of its own
        synthetic("c.parquet", [30, 30, 30]),  # a big file splits on its row groups
        synthetic("d.parquet", [5]),
    ]
    plan = plan_shards(files, 40)
    assert [_pieces(s) for s in plan.shards] == [
        [("a.parquet", 0, 1)],
        [("b.parquet", 0, 1)],
        [("c.parquet", 0, 1)],
        [("c.parquet", 1, 2)],
        [("c.parquet", 2, 3), ("d.parquet", 0, 1)],
    ]


def test_committed_pieces_of_a_packed_shard_are_skipped_as_that_shard():
    files = [synthetic(f"f{i}.parquet", [10]) for i in range(4)]
    first = plan_shards(files, 20).shards
    packed = first[0]
    committed = {p.input_relpath: [(p.rg_start, p.rg_stop, packed.shard_id)] for p in packed.pieces}
    second = plan_shards(files, 1000, committed)
    assert [s.shard_id for s in second.skipped] == [packed.shard_id]
    assert second.skipped[0].output_relpath == packed.output_relpath
    assert [_pieces(s) for s in second.shards] == [[("f2.parquet", 0, 1), ("f3.parquet", 0, 1)]]
    text = second.describe()
    assert "f0.parquet: 10 rows in 1 row groups, 0 shards to score, 1 to skip" in text
    assert "f3.parquet: 10 rows in 1 row groups, 1 shards to score, 0 to skip" in text


def test_a_poison_file_is_split_off_and_the_rest_is_a_shard_named_by_its_pieces():
    files = [synthetic(f"f{i}.parquet", [10]) for i in range(3)]
    (shard,) = plan_shards(files, 100).shards
    alone, rest = split_off(shard, "/in/f1.parquet")
    assert alone.shard_id == "f1.parquet:0-1" and alone.input_path == "/in/f1.parquet"
    assert _pieces(rest) == [("f0.parquet", 0, 1), ("f2.parquet", 0, 1)]
    assert rest.shard_id != shard.shard_id and rest.rows == 20
    assert split_off(alone, "/in/f1.parquet")[1] is None


def test_a_read_error_names_its_file_through_pickling_and_the_failure():
    import pickle

    error = pickle.loads(pickle.dumps(ShardReadError("/in/f1.parquet: bad", input_path="/in/f1")))
    assert error.input_path == "/in/f1" and str(error) == "/in/f1.parquet: bad"
    failure = local_failure(error)
    assert failure.input_path == "/in/f1" and not failure.retryable


@given(
    files=st.lists(st.lists(st.integers(0, 120), max_size=6), min_size=1, max_size=8),
    folders=st.lists(st.sampled_from(["dt=1", "dt=2", ""]), min_size=8, max_size=8),
    first_rows=st.integers(1, 300),
    second_rows=st.integers(1, 300),
    keep=st.lists(st.booleans(), max_size=40),
)
def test_every_row_group_of_every_file_is_planned_exactly_once(
    files, folders, first_rows, second_rows, keep
):
    inputs = [
        synthetic("/".join(p for p in (folder, f"f{i}.parquet") if p), rows)
        for i, (rows, folder) in enumerate(zip(files, folders))
    ]
    first = plan_shards(inputs, first_rows).shards
    for s in first:
        assert s.rows <= first_rows or sum(len(p.row_groups) for p in s.pieces) == 1
        assert len({p.input_relpath.rpartition("/")[0] for p in s.pieces}) == 1
        assert len({p.input_relpath for p in s.pieces}) == len(s.pieces)
    committed: dict[str, list] = {}
    for shard, kept in zip(first, keep):
        if kept:
            for p in shard.pieces:
                committed.setdefault(p.input_relpath, []).append(
                    (p.rg_start, p.rg_stop, shard.shard_id)
                )
    second = plan_shards(inputs, second_rows, committed)
    covered = sorted(
        (p.input_relpath, g)
        for s in (*second.shards, *second.skipped)
        for p in s.pieces
        for g in p.row_groups
    )
    assert covered == sorted((f.relpath, g) for f in inputs for g in range(len(f.row_group_rows)))
    assert {s.shard_id for s in second.skipped} == {s.shard_id for s, k in zip(first, keep) if k}
    assert second.rows + second.skipped_rows == sum(map(sum, files))


# -- the actor -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model():
    return load_model()


def _scorer(model, source, out, batch_rows):
    return shard_scorer(model, source, out, batch_rows=batch_rows, run_id="run-packed")


def test_a_packed_shard_is_read_file_by_file_and_coalesced_scoring_as_each_file_alone(
    model, tmp_path
):
    source = make_history(tmp_path / "in", sessions=6_000, files=60, days=1, row_group_rows=50)
    scorer = _scorer(model, source, tmp_path / "out", batch_rows=1_000)
    (shard,) = plan_shards(scan_inputs(resolve(source)), 10_000).shards
    assert shard.files == 60
    batches = list(scorer.batches(scorer.open(shard, has_label=True), shard))
    assert [b.num_rows for b in batches] == [1_000] * 6  # 120 row groups of 50 → 6 batches
    key = model.card.key_column
    seconds = {"read": 0.0, "encode": 0.0, "infer": 0.0, "write": 0.0}
    got = pa.concat_tables([scorer.score(shard, b, seconds).table for b in batches])
    alone = pa.concat_tables(
        [
            model.score(
                pq.read_table(p.input_path, read_dictionary=model.categorical_string_columns),
                key_column=key,
                run_id="run-packed",
            )
            for p in shard.pieces
        ]
    )
    assert got[key].to_pylist() == alone[key].to_pylist()  # the files' rows, in order
    for name in ("intent_raw", "intent_calibrated"):
        np.testing.assert_array_equal(got[name].to_numpy(), alone[name].to_numpy())
    assert got["status"].to_pylist() == alone["status"].to_pylist()


def test_a_missing_column_in_a_later_file_names_that_file(model, tmp_path):
    source = make_history(tmp_path / "in", sessions=600, files=6, days=1, row_group_rows=50)
    victim = sorted(source.rglob("*.parquet"))[3]
    pq.write_table(pq.read_table(victim).drop_columns(["page_value"]), victim)
    scorer = _scorer(model, source, tmp_path / "out", batch_rows=1_000)
    (shard,) = plan_shards(scan_inputs(resolve(source)), 10_000).shards
    with pytest.raises(
        ShardReadError, match=r"part-00003\.parquet: missing column\(s\) page_value"
    ) as caught:
        list(scorer.batches(scorer.open(shard, has_label=True), shard))
    assert caught.value.input_path == str(victim)


# -- whole runs ----------------------------------------------------------------------------------


def test_packed_shards_commit_every_session_once_and_name_their_files_stably(tmp_path, drivers):
    history = make_history(tmp_path / "in", **SMALL_FILES)
    out = tmp_path / "out"
    plans = [_run(drivers, history, out, *PACKED, "--dry-run")[0]["plan"] for _ in range(2)]
    assert plans[0]["shards"] == plans[1]["shards"]
    names = {s["output_relpath"] for s in plans[0]["shards"]}
    assert len(names) == PACKED_SHARDS and all("-and-9-more-" in n for n in names)

    summary, _ = _run(drivers, history, out, *PACKED)
    assert summary["shards_committed"] == PACKED_SHARDS and summary["rows"] == 6_000
    assert {str(p.relative_to(out)) for p in (out / "scores").rglob("*.parquet")} == names
    assert commits(out) == PACKED_SHARDS
    assert_exactly_once(history, out)
    stats = shard_stats(out, summary["run_id"])
    assert {r["input_files"] for r in stats} == {10}
    assert all(r["input_path"].endswith(".parquet") and r["row_group_start"] == 0 for r in stats)
    for record in Manifest.load(resolve(out)).records.values():
        assert len(record.pieces) == 10 and sum(p.rows for p in record.pieces) == record.rows

    again, _ = _run(drivers, history, out, *PACKED)
    assert again["shards_skipped"] == PACKED_SHARDS and again["rows"] == 0


def test_resume_and_a_changed_file_rescore_only_the_shards_that_hold_them(tmp_path, drivers):
    history = make_history(tmp_path / "in", **SMALL_FILES)
    out = tmp_path / "out"
    first, _ = _run(drivers, history, out, *PACKED, "--since", "2026-11-27")  # one day of two
    assert first["shards_committed"] == 3 and first["rows"] == 3_000
    resumed, _ = _run(drivers, history, out, *PACKED)
    assert resumed["shards_skipped"] == 3 and resumed["shards_committed"] == 3
    assert resumed["rows"] == 3_000
    assert_exactly_once(history, out)

    victim = sorted((history / "dt=2026-11-26").glob("*.parquet"))[12]  # in the day's 2nd shard
    table = pq.read_table(victim)
    pq.write_table(table.slice(0, 80), victim, row_group_size=40)
    changed, _ = _run(drivers, history, out, *PACKED)
    assert changed["shards_committed"] == 1 and changed["shards_skipped"] == PACKED_SHARDS - 1
    assert changed["rows"] == 980  # the changed shard's ten files, the victim now of 80 rows
    assert_exactly_once(history, out)


def test_a_poison_file_in_a_packed_shard_fails_alone_and_the_rest_commits(tmp_path, drivers):
    history = make_history(tmp_path / "in", **SMALL_FILES)
    poison = sorted((history / "dt=2026-11-26").glob("*.parquet"))[4]
    zero_data_pages(poison)
    out = tmp_path / "out"
    summary, stderr = _run(drivers, history, out, *PACKED, code=1)
    assert summary["shards_failed"] == 1
    assert [f["input"] for f in summary["failures"]] == [str(poison)]
    assert str(poison) in stderr
    assert summary["rows"] == 5_900  # every file but the poison one, in this run
    stats = shard_stats(out, summary["run_id"])
    (failed,) = [r for r in stats if r["status"] == "failed"]
    assert failed["input_path"] == str(poison) and failed["error"].startswith(str(poison))
    assert failed["input_files"] == 1 and failed["shard_id"] == f"dt=2026-11-26/{poison.name}:0-2"
    committed = [r for r in stats if r["status"] == "committed"]
    assert len(committed) == PACKED_SHARDS and {r["attempt"] for r in committed} == {1}
    assert sorted(r["input_files"] for r in committed)[0] == 9  # the poison's shard, less it

    data = pq.read_table(next(p for p in history.rglob("*.parquet") if p != poison))
    pq.write_table(data.slice(0, 100), poison, row_group_size=50)  # repaired
    repaired, _ = _run(drivers, history, out, *PACKED)
    assert repaired["shards_committed"] == 1 and repaired["rows"] == 100


def test_a_file_changed_mid_run_in_a_packed_shard_fails_alone_and_the_rest_commits(
    tmp_path, drivers
):
    history = make_history(tmp_path / "in", **SMALL_FILES)
    victim = sorted((history / "dt=2026-11-27").glob("*.parquet"))[24]  # in the last shard
    out = tmp_path / "out"
    # Batches of 10 rows: slow enough that the run is stopped after its first commit, long
    # before the last shard's files are opened.
    driver = drivers.start(
        str(history), str(out), "--shard-rows", "1000", "--batch-rows", "10", "--json"
    )
    wait_for(lambda: commits(out) >= 1, 120, "the first commit")
    drivers.signal(driver, signal.SIGSTOP)
    assert commits(out) < PACKED_SHARDS - 1, "the run got to the last shard before the change"
    replace_with_a_new_version(victim)
    drivers.signal(driver, signal.SIGCONT)
    code, stdout, stderr = drivers.wait(driver, 180)
    assert code == 1, stderr
    assert f"input changed during the run: {victim}" in stderr
    summary = json.loads(stdout)
    assert [f["input"] for f in summary["failures"]] == [str(victim)]
    assert summary["rows"] == 5_900
    stats = shard_stats(out, summary["run_id"])
    (failed,) = [r for r in stats if r["status"] == "failed"]
    assert failed["input_path"] == str(victim) and failed["input_files"] == 1
    assert failed["error"].startswith(f"input changed during the run: {victim}")
    committed = [r for r in stats if r["status"] == "committed"]
    assert len(committed) == PACKED_SHARDS  # the victim's shard less the victim, too
    assert sum(r["rows"] for r in committed) == 5_900

    rerun, _ = _run(drivers, history, out, *PACKED)
    assert rerun["shards_committed"] == 1 and rerun["rows"] == 100  # the new version alone
    assert_exactly_once(history, out)  # and no row of the old one


def test_a_mix_of_big_and_small_files_in_one_folder(tmp_path, drivers):
    history = make_history(tmp_path / "in", sessions=3_000, files=30, days=1, row_group_rows=50)
    day = next(history.iterdir())
    big = pa.concat_tables([pq.read_table(p) for p in sorted(day.glob("*.parquet"))[:10]])
    for path in sorted(day.glob("*.parquet"))[:10]:
        path.unlink()
    pq.write_table(big, day / "part-00000.parquet", row_group_size=250)  # 1,000 rows, 4 groups
    out = tmp_path / "out"
    summary, _ = _run(drivers, history, out, "--shard-rows", "600")
    plan = plan_shards(scan_inputs(resolve(history)), 600)
    assert summary["shards_committed"] == len(plan.shards) and summary["rows"] == 3_000
    assert plan.shards[0].files == 1  # the big file's first two row groups
    assert any(s.files > 1 and s.input_relpath.endswith("part-00000.parquet") for s in plan.shards)
    assert_exactly_once(history, out)


def test_commit_records_of_the_old_flat_format_still_resume(tmp_path, drivers):
    history = make_history(tmp_path / "in", sessions=2_000, files=2, days=1, row_group_rows=500)
    out = tmp_path / "out"
    first, _ = _run(drivers, history, out, "--shard-rows", "1000")
    assert first["shards_committed"] == 2
    for path in (out / "_scorer" / "commits").glob("*.json"):
        data = json.loads(path.read_text())
        (piece,) = data.pop("pieces")
        piece.pop("rows")
        path.write_text(json.dumps(data | piece))  # as scorer wrote them before packing
        old = CommitRecord.from_dict(json.loads(path.read_text()))
        assert old.pieces[0].rows == old.rows
    again, stderr = _run(drivers, history, out, "--shard-rows", "1000")
    assert "unreadable commit record" not in stderr
    assert again["shards_skipped"] == 2 and again["rows"] == 0


def test_thousands_of_small_files_read_by_forked_processes_score_once_and_resume(tmp_path, drivers):
    # 2,000 files: on 2 cores or more, a forked process reads half their footers
    # (`plan.PROCESS_SCAN_MIN_FILES`), and the in-process worker opens those without them.
    history = make_history(tmp_path / "in", sessions=4_000, files=2_000, days=1, row_group_rows=2)
    out = tmp_path / "out"
    summary, _ = _run(drivers, history, out, "--shard-rows", "500")
    # 8 shards of 250 files, the first cut in two (`packing.with_quick_head`)
    assert summary["rows"] == 4_000 and summary["shards_committed"] == 9
    assert_exactly_once(history, out)
    again, _ = _run(drivers, history, out, "--shard-rows", "500")
    assert again["shards_skipped"] == 9 and again["rows"] == 0


def test_a_run_in_process_cuts_its_first_shard_to_a_quick_head_alike_on_every_rerun(
    tmp_path, drivers
):
    # 400 files of 2 rows, shards of 250 files: the first is ~0.4 s of in-process work, so it
    # is cut (`packing.with_quick_head`); a run with actors keeps the shards as packed.
    history = make_history(tmp_path / "in", sessions=800, files=400, days=1, row_group_rows=2)
    out = tmp_path / "out"
    args = [history, out, "--shard-rows", "500", "--dry-run"]
    plans = [_run(drivers, *args)[0]["plan"]["shards"] for _ in range(2)]
    with_actors = _run(drivers, *args, "--actors", "2")[0]["plan"]["shards"]
    assert plans[0] == plans[1]
    assert [len(s["pieces"]) for s in with_actors] == [250, 150]
    head, rest, last = (len(s["pieces"]) for s in plans[0])
    assert 1 <= head < 250 and head + rest == 250 and last == 150
    assert plans[0][2] == with_actors[1]  # the other shards keep their names

    summary, _ = _run(drivers, history, out, "--shard-rows", "500")
    assert summary["shards_committed"] == 3 and summary["rows"] == 800
    assert_exactly_once(history, out)
