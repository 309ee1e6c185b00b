"""Input that hides or hurts, through `scorer score` as a user types it (issue 24, cases 6-9).

Values that would score NaN as `ok`, null keys, repeated `--partition` values, file names with
console markup, credentials in an endpoint, model bytes swapped during a run's start, and files
whose footer, row groups or strings are beyond the documented limits (docs/limits.md). Every test
runs the real CLI in a process of its own on real Parquet files.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from support.inputs import make_history


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}


def _score(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`scorer score ARGS` in a process of its own, as typed (in-process: no Ray, no forks)."""
    command = [sys.executable, "-m", "scorer", "score", *args, "--processes", "0"]
    return subprocess.run(
        command, capture_output=True, text=True, env=env or _env(), timeout=300, check=False
    )


def _scores(out: Path) -> pa.Table:
    files = sorted((out / "scores").rglob("*.parquet"))
    return pa.concat_tables([pq.read_table(f, partitioning=None) for f in files])


def _shard_stats(out: Path) -> pa.Table:
    return pq.read_table(out / "stats" / "shards", partitioning=None)


def _only_file(root: Path) -> Path:
    (path,) = sorted(root.rglob("*.parquet"))
    return path


def _rewrite(path: Path, change) -> None:
    table = pq.read_table(path, partitioning=None)
    pq.write_table(change(table), path)


def _set(table: pa.Table, column: str, row: int, value) -> pa.Table:
    values = table[column].to_pylist()
    values[row] = value
    index = table.schema.get_field_index(column)
    return table.set_column(index, column, pa.array(values, table.schema.field(column).type))


# -- case 6: values that hide -----------------------------------------------------------------


def test_a_value_beyond_float32_gets_not_finite_and_null_scores_never_nan_with_ok(tmp_path):
    history = make_history(tmp_path / "in", sessions=1_000, files=1, days=1)
    source = _only_file(history)
    _rewrite(source, lambda t: _set(_set(t, "page_value", 3, 1e39), "exit_rate", 5, -1e39))
    out = tmp_path / "out"

    run = _score(str(history), str(out))

    assert run.returncode == 0, run.stderr
    scores = _scores(out)
    assert scores.num_rows == 1_000
    status = scores["status"].cast(pa.string()).to_pylist()
    assert status[3] == "not_finite:page_value"
    assert status[5] == "not_finite:exit_rate"
    for row in (3, 5):
        assert scores["intent_raw"][row].as_py() is None
        assert scores["intent_calibrated"][row].as_py() is None
    ok = pc.equal(scores["status"].cast(pa.string()), "ok")
    assert not pc.any(pc.is_nan(pc.filter(scores["intent_raw"], ok))).as_py()
    assert pc.sum(_shard_stats(out)["rows_invalid"]).as_py() == 2


def test_a_null_key_gets_a_status_of_its_own_and_is_counted(tmp_path):
    history = make_history(tmp_path / "in", sessions=1_000, files=1, days=1)
    source = _only_file(history)
    # Row 7 has a null key and a missing input: the key comes first.
    _rewrite(
        source,
        lambda t: _set(
            _set(_set(t, "session_id", 4, None), "session_id", 7, None), "bounce_rate", 7, None
        ),
    )
    out = tmp_path / "out"

    run = _score(str(history), str(out), "--json")

    assert run.returncode == 0, run.stderr
    scores = _scores(out)
    status = scores["status"].cast(pa.string()).to_pylist()
    assert status[4] == status[7] == "missing:session_id"
    assert (
        scores["intent_raw"][4].as_py() is None and scores["intent_calibrated"][7].as_py() is None
    )
    assert status.count("ok") == 998
    stats = _shard_stats(out)
    assert pc.sum(stats["rows_invalid"]).as_py() == 2
    assert pc.sum(stats["rows_ok"]).as_py() == 998


def test_repeated_partition_values_of_one_key_are_alternatives(tmp_path):
    history = make_history(tmp_path / "in", sessions=3_000, files=3, days=3)
    days = sorted(p.name.split("=", 1)[1] for p in history.iterdir() if p.name.startswith("dt="))
    rows = {
        day: sum(
            pq.ParquetFile(f).metadata.num_rows for f in (history / f"dt={day}").rglob("*.parquet")
        )
        for day in days
    }
    out = tmp_path / "out"

    run = _score(
        str(history),
        str(out),
        "--partition",
        f"dt={days[0]}",
        "--partition",
        f"dt={days[2]}",
        "--json",
    )

    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["rows"] == rows[days[0]] + rows[days[2]]
    folders = {p.name for p in (out / "scores").iterdir()}
    assert folders == {f"dt={days[0]}", f"dt={days[2]}"}

    # The config file says the same with a list.
    config = tmp_path / "job.toml"
    config.write_text(f'[partition]\ndt = ["{days[1]}", "{days[2]}"]\n')
    again = _score(str(history), str(tmp_path / "out2"), "--config", str(config), "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["rows"] == rows[days[1]] + rows[days[2]]


def test_the_library_takes_alternatives_for_one_partition_key():
    from scorer.config import JobConfig
    from scorer.partitions import parse_partitions

    parsed = parse_partitions(["dt=2026-11-27", "dt=2026-11-28", "region=3"])
    assert parsed == {"dt": ("2026-11-27", "2026-11-28"), "region": ("3",)}
    # A single value stays a single alternative, as jobs written for 0.2 pass it.
    assert JobConfig(partition={"dt": "2026-11-27"}).partition == {"dt": ("2026-11-27",)}


# -- case 7: markup in a file name ------------------------------------------------------------


def test_a_file_name_with_markup_fails_its_shard_on_a_terminal_named_as_it_is(tmp_path):
    import pty

    history = make_history(tmp_path / "in", sessions=1_000, files=1, days=1)
    bad = history / "bad["
    bad.mkdir()
    (bad / "x].parquet").write_bytes(b"PAR1 this is not a Parquet file [bold]PAR1")
    out = tmp_path / "out"
    leader, follower = pty.openpty()
    command = [sys.executable, "-m", "scorer", "score", str(history), str(out), "--processes", "0"]
    driver = subprocess.Popen(command, stdout=follower, stderr=follower, env=_env())
    os.close(follower)
    shown = b""
    with contextlib.suppress(OSError):  # EIO once the driver has exited
        while chunk := os.read(leader, 4096):
            shown += chunk
    os.close(leader)
    text = shown.decode(errors="replace")

    assert driver.wait(timeout=120) == 1, text
    assert "MarkupError" not in text and "Traceback" not in text
    assert "bad[/x].parquet" in text
    assert _scores(out).num_rows == 1_000

    # `scorer report` shows the failed attempt's file and error as they are, too.
    report = subprocess.run(
        [sys.executable, "-m", "scorer", "report", str(out)],
        capture_output=True,
        text=True,
        env=_env() | {"COLUMNS": "400"},
        timeout=300,
        check=False,
    )
    assert report.returncode == 0, report.stderr
    assert "bad[/x].parquet" in report.stdout


# -- case 8: secrets in an endpoint, model bytes ----------------------------------------------

ENDPOINT_SECRET = "pw-in-endpoint-5c1e"


@pytest.fixture
def s3_endpoint():
    from support.servers import moto_s3

    with moto_s3(
        {"AWS_ACCESS_KEY_ID": "hostile-key", "AWS_SECRET_ACCESS_KEY": "hostile-secret"}
    ) as address:
        import pyarrow.fs as pafs

        s3 = pafs.S3FileSystem(endpoint_override=address, scheme="http", allow_bucket_creation=True)
        s3.create_dir("lake")
        yield address, s3


def _s3_bytes(s3, prefix: str) -> list[tuple[str, bytes]]:
    import pyarrow.fs as pafs

    infos = s3.get_file_info(pafs.FileSelector(prefix, recursive=True, allow_not_found=True))
    found = []
    for info in infos:
        if info.type == pafs.FileType.File:
            with s3.open_input_stream(info.path) as f:
                found.append((info.path, f.read()))
    return found


@pytest.mark.parametrize("where", ["AWS_ENDPOINT_URL", "endpoint_override", "[storage]"])
def test_credentials_in_an_endpoint_are_refused_and_shown_redacted(tmp_path, s3_endpoint, where):
    # The S3 client takes `user` for the host: such a run failed (exit 2) naming the endpoint,
    # password included, in its message and --json. Now it is refused before anything starts,
    # the endpoint shown as ***@host.
    address, s3 = s3_endpoint
    history = make_history(tmp_path / "in", sessions=1_000, files=2, days=1)
    env = _env() | {"AWS_DEFAULT_REGION": "us-east-1"}
    output = "s3://lake/scored"
    extra: list[str] = []
    endpoint = f"user:{ENDPOINT_SECRET}@{address}"
    if where == "AWS_ENDPOINT_URL":
        env["AWS_ENDPOINT_URL"] = f"http://{endpoint}"
    elif where == "endpoint_override":
        output += f"?endpoint_override={endpoint}&scheme=http"
    else:
        config = tmp_path / "job.toml"
        config.write_text(f'[storage]\nendpoint_override = "{endpoint}"\nscheme = "http"\n')
        extra = ["--config", str(config)]

    run = _score(str(history), output, "--json", *extra, env=env)

    assert run.returncode == 2, run.stderr
    assert ENDPOINT_SECRET not in run.stdout + run.stderr
    assert "credentials" in run.stderr
    assert where == "[storage]" or f"***@{address}" in run.stderr
    assert _s3_bytes(s3, "lake/scored") == []


def test_redact_hides_user_info_in_an_endpoint_parameter():
    from scorer.storage import redact

    uri = f"s3://lake/p?endpoint_override=user:{ENDPOINT_SECRET}@127.0.0.1:9000&scheme=http"
    assert redact(uri) == "s3://lake/p?endpoint_override=***@127.0.0.1:9000&scheme=http"


def test_workers_score_the_model_bytes_the_driver_verified(tmp_path, monkeypatch):
    # `scorer calibrate --out` in place while a run starts: the driver verified model A, then
    # read the folder again for its workers and shipped them model B, whose scores the
    # records credit to A. The bytes verified are now the bytes shipped.
    import shutil

    from scorer.model.runtime import default_model_dir, load_model
    from scorer.pipeline import entry
    from scorer.pipeline.entry import score

    model_a = tmp_path / "model"
    shutil.copytree(default_model_dir(), model_a)
    history = make_history(tmp_path / "in", sessions=4_000, files=2, days=1)
    model_b = tmp_path / "model-b"
    calibrate = [
        sys.executable,
        "-m",
        "scorer",
        "calibrate",
        str(history),
        "--model",
        str(model_a),
        "--out",
        str(model_b),
        "--method",
        "platt",
    ]
    subprocess.run(calibrate, check=True, capture_output=True, env=_env(), timeout=300)
    expected = load_model(model_a)
    assert load_model(model_b).card.sha256 != expected.card.sha256
    real_load = entry.load_model

    def load_then_recalibrated_in_place(*args, **kwargs):
        loaded = real_load(*args, **kwargs)
        for name in ("model.onnx", "model.json"):
            shutil.copyfile(model_b / name, model_a / name)
        return loaded

    monkeypatch.setattr(entry, "load_model", load_then_recalibrated_in_place)
    out = tmp_path / "out"
    summary = score(
        str(history), str(out), model=str(model_a), processes=1, batch_rows=5, shard_rows=500
    )

    assert summary.exit_code == 0 and summary.rows == 4_000
    stats = _shard_stats(out)
    assert len(set(stats["pid"].to_pylist())) == 2  # the worker process scored shards too
    scores = _scores(out)
    inputs = pa.concat_tables(
        [pq.read_table(f, partitioning=None) for f in sorted(history.rglob("*.parquet"))]
    )
    wanted = dict(
        zip(
            inputs["session_id"].to_pylist(),
            expected.score(inputs)["intent_calibrated"].to_pylist(),
            strict=True,
        )
    )
    got = dict(
        zip(scores["session_id"].to_pylist(), scores["intent_calibrated"].to_pylist(), strict=True)
    )
    assert got == wanted


def test_a_worker_refuses_model_bytes_other_than_the_verified_ones(tmp_path):
    from scorer.errors import ChecksumError
    from scorer.model.runtime import load_model
    from scorer.pipeline.layout import OutputLayout
    from scorer.pipeline.shipping import ActorSettings, load_shipped_model
    from scorer.storage import resolve

    model = load_model()
    settings = ActorSettings(
        model_files=model.files,
        model_sha256="0" * 64,
        threads=1,
        batch_rows=10,
        key_column="session_id",
        keep=(),
        label_column=None,
        run_id="run",
        input_location=resolve(tmp_path),
        layout=OutputLayout(resolve(tmp_path / "out")),
    )
    with pytest.raises(ChecksumError, match="not the model this run verified"):
        load_shipped_model(settings)


# -- case 9: hostile files --------------------------------------------------------------------


def _failures(run: subprocess.CompletedProcess[str]) -> list[dict[str, str]]:
    return json.loads(run.stdout)["failures"]


def test_a_footer_beyond_the_limit_fails_its_file_alone_named(tmp_path):
    from scorer.pipeline.limits import MAX_FOOTER_BYTES

    history = make_history(tmp_path / "in", sessions=1_000, files=1, days=1)
    hostile = history / "dt=hostile" / "huge-footer.parquet"
    hostile.parent.mkdir()
    table = pq.read_table(_only_file(history), partitioning=None).slice(0, 10)
    with pq.ParquetWriter(hostile, table.schema) as writer:
        writer.write_table(table)
        writer.add_key_value_metadata({"padding": "x" * (MAX_FOOTER_BYTES + 1)})
    out = tmp_path / "out"

    run = _score(str(history), str(out), "--json")

    assert run.returncode == 1, run.stderr
    (failure,) = _failures(run)
    assert "huge-footer.parquet" in failure["input"] + failure["error"]
    assert "beyond the limit" in failure["error"] and "footer" in failure["error"]
    assert json.loads(run.stdout)["rows"] == 1_000
    assert _scores(out).num_rows == 1_000


def test_too_many_row_groups_fail_the_file_alone_named(tmp_path):
    from scorer.pipeline.limits import MAX_ROW_GROUPS

    history = make_history(tmp_path / "in", sessions=1_000, files=1, days=1)
    hostile = history / "dt=hostile" / "row-groups.parquet"
    hostile.parent.mkdir()
    keys = pa.table({"session_id": pa.array(range(MAX_ROW_GROUPS + 1), pa.int64())})
    pq.write_table(keys, hostile, row_group_size=1, write_statistics=False)
    out = tmp_path / "out"

    run = _score(str(history), str(out), "--json")

    assert run.returncode == 1, run.stderr
    (failure,) = _failures(run)
    assert "row-groups.parquet" in failure["input"] + failure["error"]
    assert f"{MAX_ROW_GROUPS + 1:,} row groups, beyond the limit" in failure["error"]
    assert _scores(out).num_rows == 1_000


def test_a_dictionary_value_repeated_past_the_string_limit_fails_its_file_alone(tmp_path):
    # 600 rows pointing at one 1 MB value: 47 kB on disk, 600 MB decoded in one batch.
    import numpy as np

    history = make_history(tmp_path / "in", sessions=2_000, files=2, days=1)
    files = sorted(history.rglob("*.parquet"))
    for path in files:
        _rewrite(path, lambda t: t.append_column("note", pa.array(["fine"] * t.num_rows)))
    hostile = history / "dt=hostile" / "long-strings.parquet"
    hostile.parent.mkdir()
    table = pq.read_table(files[0], partitioning=None).slice(0, 600).drop_columns(["note"])
    note = pa.DictionaryArray.from_arrays(
        pa.array(np.zeros(600, np.int32)), pa.array(["x" * 1_000_000])
    )
    pq.write_table(table.append_column("note", note), hostile, store_schema=False)
    assert hostile.stat().st_size < 200_000
    out = tmp_path / "out"

    run = _score(str(history), str(out), "--keep", "note", "--json")

    assert run.returncode == 1, run.stderr
    (failure,) = _failures(run)
    assert "long-strings.parquet" in failure["error"]
    assert "'note'" in failure["error"] and "beyond the limit" in failure["error"]
    scores = _scores(out)
    assert scores.num_rows == 2_000
    assert set(scores["note"].to_pylist()) == {"fine"}


@pytest.mark.parametrize("compression", ["snappy", "zstd", "gzip", "none"])
def test_string_bounds_read_the_dictionary_page_of_real_files(tmp_path, compression):
    # Unique keys (a 1 MB dictionary page, then plain pages) pass; one long value fails.
    import numpy as np

    from scorer.errors import InputLimitError
    from scorer.pipeline.limits import check_string_bytes, string_leaves

    def check(table: pa.Table) -> None:
        path = tmp_path / f"{compression}.parquet"
        pq.write_table(table, path, compression=compression, store_schema=False)
        metadata = pq.read_metadata(path)
        leaves = string_leaves(metadata, ["key"])
        with pa.OSFile(str(path)) as f:
            check_string_bytes(
                metadata, 0, leaves, 131_072, lambda o, n: f.read_at(n, o), str(path)
            )

    check(pa.table({"key": [f"session-{i:012d}" for i in range(300_000)]}))
    check(pa.table({"key": [f"session-{i}" for i in range(300_000)]}))  # of varied widths
    long = pa.DictionaryArray.from_arrays(
        pa.array(np.zeros(600, np.int32)), pa.array(["x" * 1_000_000])
    )
    with pytest.raises(InputLimitError, match="'key'.*beyond the limit of"):
        check(pa.table({"key": long}))
