"""What identifies an input file (docs/input.md, "What identifies a file"): where it is, not its path
below INPUT. Nightly folders without ``key=value`` names into one OUTPUT keep every night; one
file reached through another root, a folder symlink or a symlink loop is scored once; a commit
record counts only while its score file exists; OUTPUTs of 0.2.0 resume without rescoring.

Each run is ``scorer score IN OUT`` as typed, in a process of its own (`conftest.drivers`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from scorer.model.sessions import load_bundled_sessions

NIGHT_ROWS = 3_000


def _write_night(path: Path, night: int, rows: int = NIGHT_ROWS) -> Path:
    """``rows`` bundled sessions with keys of their own (``night * 1e6 + i``)."""
    table = load_bundled_sessions().slice(night * rows % 9_000, rows)
    ids = pa.array(range(night * 1_000_000, night * 1_000_000 + rows), pa.int64())
    table = table.set_column(table.schema.get_field_index("session_id"), "session_id", ids)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=1_000)
    return path


def _score(drivers, *args, code=0):
    got, stdout, stderr = drivers.wait(drivers.start(*map(str, args), "--json"), 180)
    assert got == code, stderr
    return (json.loads(stdout) if stdout.strip() else None), stderr


def _keys(out: Path) -> pa.ChunkedArray:
    return ds.dataset(out / "scores", format="parquet").to_table(columns=["session_id"])[
        "session_id"
    ]


def _rows_and_distinct(out: Path) -> tuple[int, int]:
    keys = _keys(out)
    return len(keys), pc.count_distinct(keys).as_py()


def test_nightly_folders_without_hive_names_keep_every_night(tmp_path, drivers):
    exports, lake = tmp_path / "exports", tmp_path / "lake"
    _write_night(exports / "2026-11-27" / "part-0.parquet", 1)
    _write_night(exports / "2026-11-28" / "part-0.parquet", 2)

    _score(drivers, exports / "2026-11-27", lake)
    second, _ = _score(drivers, exports / "2026-11-28", lake)
    assert second["shards_skipped"] == 0
    # Before: the second night's part-0 was taken for a new version of the first night's and
    # its scores were removed (3,000 rows left of 6,000).
    assert _rows_and_distinct(lake) == (2 * NIGHT_ROWS, 2 * NIGHT_ROWS)
    names = sorted(p.name for p in (lake / "scores").rglob("*.parquet"))
    assert names[0].startswith("part-0-rg") and names[-1].startswith("part-0~")

    # Each night's rerun skips its own scores and leaves the other night's alone.
    for night in ("2026-11-27", "2026-11-28"):
        again, _ = _score(drivers, exports / night, lake)
        assert again["rows"] == 0 and again["shards_skipped"] > 0
    assert _rows_and_distinct(lake) == (2 * NIGHT_ROWS, 2 * NIGHT_ROWS)
    assert sorted(p.name for p in (lake / "scores").rglob("*.parquet")) == names


def test_a_file_reached_through_another_root_is_not_scored_again(tmp_path, drivers):
    data, lake = tmp_path / "data", tmp_path / "lake"
    _write_night(data / "region_eu" / "part-0.parquet", 1)
    _write_night(data / "region_us" / "part-0.parquet", 2)

    _score(drivers, data, lake)
    second, _ = _score(drivers, data / "region_eu", lake)
    # Before: region_eu's file was scored again as "part-0.parquet" (rows twice).
    assert second["rows"] == 0 and second["shards_skipped"] > 0
    assert _rows_and_distinct(lake) == (2 * NIGHT_ROWS, 2 * NIGHT_ROWS)
    # Its scores kept the name of the first run; a new file below the second root is beside them.
    _write_night(data / "region_eu" / "part-1.parquet", 3)
    third, _ = _score(drivers, data / "region_eu", lake)
    assert third["rows"] == NIGHT_ROWS
    assert _rows_and_distinct(lake) == (3 * NIGHT_ROWS, 3 * NIGHT_ROWS)


def test_a_folder_symlink_beside_its_target_and_a_symlink_loop_are_scored_once(tmp_path, drivers):
    data, lake = tmp_path / "data", tmp_path / "lake"
    _write_night(data / "2026-11-27" / "part-0.parquet", 1)
    _write_night(data / "2026-11-28" / "part-0.parquet", 2)
    (data / "latest").symlink_to("2026-11-28", target_is_directory=True)
    (data / "2026-11-27" / "loop").symlink_to("..", target_is_directory=True)
    (data / "part-0-link.parquet").symlink_to(data / "2026-11-27" / "part-0.parquet")

    plan, _ = _score(drivers, data, lake, "--dry-run")
    assert [f["relpath"] for f in plan["plan"]["files"]] == [
        "2026-11-27/part-0.parquet",
        "2026-11-28/part-0.parquet",
    ]
    _score(drivers, data, lake)
    # Before: every row twice (the link's copy) and the loop followed until the OS refused it.
    assert _rows_and_distinct(lake) == (2 * NIGHT_ROWS, 2 * NIGHT_ROWS)
    again, _ = _score(drivers, data / "latest", lake)
    assert again["rows"] == 0


def test_output_inside_input_through_a_symlink_is_refused(tmp_path, drivers):
    data = tmp_path / "data"
    _write_night(data / "part-0.parquet", 1)
    (data / "lake").mkdir()
    (tmp_path / "lake-link").symlink_to(data / "lake", target_is_directory=True)

    _, stderr = _score(drivers, data, tmp_path / "lake-link", code=2)
    assert "is inside INPUT" in stderr
    assert not any((data / "lake").iterdir())


def test_a_score_file_that_is_gone_is_scored_again_and_counted(tmp_path, drivers):
    data, lake = tmp_path / "data", tmp_path / "lake"
    _write_night(data / "a.parquet", 1)
    _write_night(data / "b.parquet", 2)
    _score(drivers, data, lake, "--shard-rows", "1000")
    files = sorted((lake / "scores").rglob("*.parquet"))
    assert len(files) == 6
    files[0].unlink()  # a lifecycle rule, or an operator forcing a rescore
    files[4].unlink()

    rerun, stderr = _score(drivers, data, lake, "--shard-rows", "1000")
    # Before: "skipped", exit 0, and their 2,000 rows missing for good.
    assert rerun["rows"] == 2_000 and rerun["shards_skipped"] == 4
    assert "2 committed shard(s) whose score file is gone (2,000 rows) will be scored again" in (
        stderr
    )
    assert _rows_and_distinct(lake) == (2 * NIGHT_ROWS, 2 * NIGHT_ROWS)
    assert sorted((lake / "scores").rglob("*.parquet")) == files


def test_a_dry_run_plans_the_shards_of_a_gone_score_file_and_deletes_nothing(tmp_path, drivers):
    data, lake = tmp_path / "data", tmp_path / "lake"
    _write_night(data / "a.parquet", 1)
    _score(drivers, data, lake)
    (score_file,) = (lake / "scores").rglob("*.parquet")
    score_file.unlink()
    records = sorted((lake / "_scorer" / "commits").iterdir())

    plan, _ = _score(drivers, data, lake, "--dry-run")
    assert plan["plan"]["totals"]["rows"] == NIGHT_ROWS
    assert sorted((lake / "_scorer" / "commits").iterdir()) == records


def _as_written_by_0_2_0(lake: Path) -> None:
    """Rewrite every commit record as release 0.2.0 wrote it: pieces without an identity."""
    for path in (lake / "_scorer" / "commits").glob("*.json"):
        record = json.loads(path.read_text())
        for piece in record["pieces"]:
            assert piece.pop("input_id").startswith("file://")
        path.write_text(json.dumps(record))


def test_an_output_written_by_0_2_0_resumes_without_rescoring(tmp_path, drivers):
    data, lake = tmp_path / "data", tmp_path / "lake"
    _write_night(data / "dt=2026-11-27" / "part-0.parquet", 1)
    _write_night(data / "dt=2026-11-28" / "part-0.parquet", 2)
    _score(drivers, data, lake)
    _as_written_by_0_2_0(lake)
    names = sorted((lake / "scores").rglob("*.parquet"))

    rerun, _ = _score(drivers, data, lake)
    assert rerun["rows"] == 0 and rerun["shards_skipped"] == 2
    assert sorted((lake / "scores").rglob("*.parquet")) == names
    # Through the day's own folder too: its name below that root differs, its place does not.
    day, _ = _score(drivers, data / "dt=2026-11-28", lake)
    assert day["rows"] == 0


def test_a_file_0_2_0_scored_through_two_roots_is_left_in_output_once(tmp_path, drivers):
    data, lake = tmp_path / "data", tmp_path / "lake"
    _write_night(data / "region_eu" / "part-0.parquet", 1)
    _score(drivers, data, lake)
    # What 0.2.0 did when the folder was then scored on its own: the same file under a second
    # name. Made here by scoring a copy of the folder at another path, then pointing its
    # records at the original file, as 0.2.0's records of that run named it.
    copy = tmp_path / "copy" / "region_eu"
    copy.mkdir(parents=True)
    os.link(data / "region_eu" / "part-0.parquet", copy / "part-0.parquet")
    _score(drivers, copy, lake)
    _as_written_by_0_2_0(lake)
    for path in (lake / "_scorer" / "commits").glob("*.json"):
        record = json.loads(path.read_text())
        for piece in record["pieces"]:
            piece["input_path"] = str(data / "region_eu" / "part-0.parquet")
        path.write_text(json.dumps(record))
    assert _rows_and_distinct(lake) == (2 * NIGHT_ROWS, NIGHT_ROWS)

    rerun, stderr = _score(drivers, data, lake)
    assert rerun["rows"] == 0
    assert "held a file's rows a second time" in stderr
    assert _rows_and_distinct(lake) == (NIGHT_ROWS, NIGHT_ROWS)


@pytest.mark.parametrize("rows", [NIGHT_ROWS])
def test_the_plan_names_files_the_same_on_every_rerun(tmp_path, drivers, rows):
    exports, lake = tmp_path / "exports", tmp_path / "lake"
    _write_night(exports / "a" / "part-0.parquet", 1, rows)
    _write_night(exports / "b" / "part-0.parquet", 2, rows)
    _score(drivers, exports / "a", lake)
    first, _ = _score(drivers, exports / "b", lake, "--dry-run")
    second, _ = _score(drivers, exports / "b", lake, "--dry-run")
    assert first["plan"]["shards"] == second["plan"]["shards"]
    (shard,) = first["plan"]["shards"]
    assert shard["output_relpath"].startswith("scores/part-0~")
