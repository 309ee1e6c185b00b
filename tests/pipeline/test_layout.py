"""Where everything lives under OUTPUT (`scorer.pipeline.layout`, docs/output.md): the paths
as the docs spell them, and a layout that travels to actors whole."""

from __future__ import annotations

import pickle

import pytest
from support.manifests import write_sessions

from scorer.partitions import HIVE_NULL
from scorer.pipeline.layout import (
    LOCK,
    OUTPUT_STATE,
    RUN_STATS,
    RUN_TABLES,
    SHARD_STATS,
    OutputLayout,
    report_folder,
    run_folder,
    run_table_relpath,
    shard_output_relpath,
    temp_relpath,
)
from scorer.pipeline.packing import plan_shards
from scorer.pipeline.scan import scan_inputs
from scorer.storage import resolve


@pytest.fixture
def job(tmp_path):
    inp = tmp_path / "in"
    write_sessions(inp / "dt=2026-11-27" / "a.parquet", 100, 10)
    return inp, tmp_path / "out"


def test_layout_paths_and_pickling(job):
    inp, out_dir = job
    layout = OutputLayout(resolve(out_dir))
    shard = plan_shards(scan_inputs(resolve(inp)), 30).shards[0]
    assert not layout.writes_direct
    assert layout.final_path_for(shard) == str(out_dir / shard.output_relpath)
    assert layout.temp_path_for(shard, "r1") == str(
        out_dir / "_scorer" / "tmp" / "r1" / shard.output_relpath
    )
    assert pickle.loads(pickle.dumps(layout)) == layout


def test_run_tables_are_hive_folders_of_one_file_per_run():
    assert run_folder(SHARD_STATS, "r1") == "stats/shards/run_id=r1"
    assert run_table_relpath(RUN_STATS, "r1") == "stats/runs/run_id=r1/part-0.parquet"
    assert [run_table_relpath(t, "r1") for t in RUN_TABLES] == [
        "stats/shards/run_id=r1/part-0.parquet",
        "stats/runs/run_id=r1/part-0.parquet",
        "calibration/run_id=r1/part-0.parquet",
        "drift/run_id=r1/part-0.parquet",
    ]
    assert report_folder("r1") == "reports/r1"
    assert temp_relpath("r1") == "_scorer/tmp/r1"
    assert temp_relpath("r1", "scores/a.parquet") == "_scorer/tmp/r1/scores/a.parquet"
    assert (LOCK, OUTPUT_STATE) == ("_scorer/lock.json", "_scorer/output.json")


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, "scores/dt=2026-11-27/a-rg00002-00010.parquet"),
        (
            {"more": 3, "digest": "0123456789ab"},
            "scores/dt=2026-11-27/a-rg00002-00010-and-3-more-0123456789ab.parquet",
        ),
        (
            {"days": "2026-11-01..2026-11-03,2026-11-05"},
            "scores/dt=2026-11-27/a-rg00002-00010-dt-2026-11-01_to_2026-11-03+2026-11-05.parquet",
        ),
        (
            {"day_folder": "dt=2026-11-01"},
            "scores/dt=2026-11-27/dt=2026-11-01/a-rg00002-00010.parquet",
        ),
    ],
)
def test_a_shards_score_file_is_named_from_its_first_piece(options, expected):
    assert shard_output_relpath("dt=2026-11-27/a.parquet", 2, 10, **options) == expected


def test_a_file_at_the_inputs_root_keeps_its_name_without_a_folder():
    assert shard_output_relpath("a.parquet", 0, 1) == "scores/a-rg00000-00001.parquet"
    assert (
        shard_output_relpath("a.parquet", 0, 1, day_folder=f"dt={HIVE_NULL}")
        == "scores/dt=__HIVE_DEFAULT_PARTITION__/a-rg00000-00001.parquet"
    )
