"""Where everything lives under OUTPUT, and the storage operations the commit protocol is made of.

Layout under OUTPUT (docs/output.md); every path under OUTPUT is spelled here and nowhere else::

    scores/<folder>/<stem>-rg<start>-<stop>.parquet   shard outputs (``shard_output_relpath``)
    scores/<folder>/<stem>-rg<start>-<stop>-and-<n>-more-<digest>.parquet
                                                      a shard packing n + 1 files
    scores/<…>.run-<run_id>.parquet                   with a table format: a run's data files
                                                      (``shard_output_relpath(run_id=…)``)
    scores/_delta_log/, scores/_iceberg/              a Delta table's log, an Iceberg table's
                                                      metadata (``TABLE_LOGS``)
    stats/shards/run_id=<run_id>/part-0.parquet       one row per shard attempt (``SHARD_STATS``)
    stats/runs/run_id=<run_id>/part-0.parquet         one row per run (``RUN_STATS``)
    calibration/run_id=<run_id>/part-0.parquet        labelled runs and `scorer evaluate` (``CALIBRATION``)
    drift/run_id=<run_id>/part-0.parquet              models whose card has a reference (``DRIFT``)
    reports/<run_id>/                                 `scorer report`'s plots (``REPORTS``)
    _scorer/commits/<sha1 of shard id>.json           one commit record per committed shard
    _scorer/tmp/<run_id>/                             temporary files of one run (its shards
                                                      before commit, on every storage)
    _scorer/output.json                               the model (and output options) OUTPUT holds
    _scorer/lock.json                                 the run that holds OUTPUT (``lock``)
    _scorer/iceberg/catalog.db                        the embedded Iceberg catalog (``EMBEDDED_CATALOG``)

The per-run tables (``RUN_TABLES``) are hive-partitioned by ``run_id`` so that DuckDB, Polars or
pandas read every run at once. The names are built here and parsed back here
(``file_run``, ``is_scorer_file``, ``partition_values``), so one module knows their grammar.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import pyarrow as pa
import pyarrow.fs as pafs

from scorer.config import OutputFormat
from scorer.errors import ScorerError, ShardError
from scorer.partitions import HIVE_NULL
from scorer.storage import Location, foreign_errors

if TYPE_CHECKING:
    from scorer.pipeline.plan import Shard

SCORES = "scores"
SHARD_STATS = "stats/shards"
RUN_STATS = "stats/runs"
CALIBRATION = "calibration"
DRIFT = "drift"
REPORTS = "reports"
INTERNAL = "_scorer"
COMMITS = f"{INTERNAL}/commits"
TMP = f"{INTERNAL}/tmp"
LOCK_NAME = "lock.json"
LOCK = f"{INTERNAL}/{LOCK_NAME}"
OUTPUT_STATE = f"{INTERNAL}/output.json"
DELTA_LOG = f"{SCORES}/_delta_log"
ICEBERG_METADATA = f"{SCORES}/_iceberg"
TABLE_LOGS: Mapping[OutputFormat, str] = {
    OutputFormat.DELTA: DELTA_LOG,
    OutputFormat.ICEBERG: ICEBERG_METADATA,
}
"""The folder below ``scores/`` that each table format keeps its log or metadata in (hidden
from hive readers of ``scores/`` by its leading ``_``)."""
EMBEDDED_CATALOG = f"{INTERNAL}/iceberg/catalog.db"
"""The SQLite catalog of a local OUTPUT whose config names none (docs/iceberg.md)."""

RUN_TABLES = (SHARD_STATS, RUN_STATS, CALIBRATION, DRIFT)
"""The folders that hold one table per run, partitioned by ``run_id``."""
RUN_PARTITION = "run_id"
_RUN_TABLE_FILE = "part-0.parquet"
_RUN_SUFFIX = ".run-"
_SHARD_NAME = re.compile(r"-rg\d{5}-\d{5}")


def run_folder(table: str, run_id: str) -> str:
    """``<table>/run_id=<run_id>``: the hive folder of one run's rows of ``table``."""
    return f"{table}/{RUN_PARTITION}={run_id}"


def run_table_relpath(table: str, run_id: str) -> str:
    """The one Parquet file a run writes into ``table``."""
    return f"{run_folder(table, run_id)}/{_RUN_TABLE_FILE}"


def report_folder(run_id: str) -> str:
    return f"{REPORTS}/{run_id}"


def shard_output_relpath(
    relpath: str,
    rg_start: int,
    rg_stop: int,
    *,
    more: int = 0,
    digest: str = "",
    days: str = "",
    day_folder: str = "",
    run_id: str = "",
) -> str:
    """A shard's score file: ``scores/<folder>/<stem>-rg<start:05d>-<stop:05d>.parquet``.

    ``relpath``, ``rg_start`` and ``rg_stop`` are the shard's first piece (all of a shard of one
    file, whose name is unchanged since before shards packed files, so older OUTPUT folders
    resume as they are). A shard that packs ``more`` files after its first is
    ``<stem>-rg<start:05d>-<stop:05d>-and-<more>-more-<digest>.parquet``, ``digest`` being
    ``plan.pieces_digest`` (12 hex digits of the sha1 of its piece ids): derived from the pieces
    alone, so the same input planned with the same ``--shard-rows`` gets the same names. A piece
    of some ``days`` of its row group alone (``pipeline.days``) is
    ``<stem>-rg<start:05d>-<stop:05d>-dt-<days>.parquet``; one of a single day whose scores
    go to a table's partition is ``<folder>/<day_folder>/<stem>-rg<start:05d>-<stop:05d>.parquet``,
    ``day_folder`` being ``dt=<day>`` (``dt=`` `partitions.HIVE_NULL` for the rows without one).

    With a ``run_id`` (a table format's run) the name ends ``.run-<run_id>.parquet``: a table's
    data file is never rewritten (older versions reference it), so a run never writes onto a
    published name; ``file_run`` reads the run back.
    """
    folder, _, name = relpath.rpartition("/")
    folder = "/".join(p for p in (folder, day_folder) if p)
    stem = name[: -len(".parquet")] if name.endswith(".parquet") else name
    packed = f"-and-{more}-more-{digest}" if more else ""
    selected = f"-dt-{days.replace('..', '_to_').replace(',', '+')}" if days else ""
    run = f"{_RUN_SUFFIX}{run_id}" if run_id else ""
    name = f"{stem}-rg{rg_start:05d}-{rg_stop:05d}{packed}{selected}{run}.parquet"
    return "/".join(p for p in (SCORES, folder, name) if p)


def file_run(relpath: str) -> str | None:
    """The run id in a table's data file name (``shard_output_relpath(run_id=…)``); None for
    other names."""
    name = relpath.rpartition("/")[2]
    if _RUN_SUFFIX not in name or not name.endswith(".parquet"):
        return None
    return name[: -len(".parquet")].rpartition(_RUN_SUFFIX)[2]


def is_scorer_file(relpath: str) -> bool:
    """Written by the scorer (a shard's name, ``shard_output_relpath``), so a publish may
    remove it."""
    return file_run(relpath) is not None or _SHARD_NAME.search(relpath) is not None


def partition_values(relpath: str) -> dict[str, str | None]:
    """The hive ``key=value`` folders of a file below ``scores/``, in folder order;
    `partitions.HIVE_NULL` is a null value (the rows of a day column without a day,
    docs/nights-in-a-column.md)."""
    folders = relpath.split("/")[1:-1]
    return {
        k: None if v == HIVE_NULL else v
        for k, sep, v in (f.partition("=") for f in folders)
        if sep and k
    }


def partition_folders(relpath: str) -> tuple[str, ...]:
    """The hive ``key=value`` folders of a file below ``scores/``: the partition it is in."""
    return tuple(f for f in relpath.split("/")[1:-1] if "=" in f)


def record_key(shard_id: str) -> str:
    """File name stem of a shard's commit record (shard ids hold ``/`` and ``=``)."""
    return hashlib.sha1(shard_id.encode(), usedforsecurity=False).hexdigest()


def commit_record_relpath(shard_id: str) -> str:
    """``_scorer/commits/<record_key>.json``: the record that commits one shard."""
    return f"{COMMITS}/{record_key(shard_id)}.json"


def temp_relpath(run_id: str, relpath: str = "") -> str:
    """Where a run stages ``relpath`` before it is renamed into place (its folder without)."""
    return "/".join(p for p in (TMP, run_id, relpath) if p)


@dataclass(frozen=True)
class OutputLayout:
    """Where a shard's files go under OUTPUT; picklable, so actors get one."""

    location: Location

    @property
    def writes_direct(self) -> bool:
        """True where rename is not atomic (object storage): a shard is staged whole, then
        copied into place once its record is written."""
        return not self.location.is_local

    def final_path_for(self, shard: Shard) -> str:
        return self.location.child(shard.output_relpath).path

    def temp_path_for(self, shard: Shard, run_id: str) -> str:
        return self.location.child(temp_relpath(run_id, shard.output_relpath)).path

    def path(self, relpath: str) -> str:
        return self.location.child(relpath).path

    def uri(self, relpath: str) -> str:
        return self.location.child(relpath).uri

    @contextmanager
    def open_shard_sink(self, shard: Shard, run_id: str) -> Iterator[pa.NativeFile]:
        """The stream an actor writes a shard's Parquet file to; whole or nothing on every fs.

        Always to the run's temporary folder, never under ``scores/``, so that readers of
        ``scores/`` see only committed files: locally a temporary file (``commit_shard``
        renames it); on object storage an in-memory buffer uploaded in one request when the
        block ends without error (``commit_shard`` copies it into place, server-side).
        """
        fs = self.location.filesystem
        path = self.temp_path_for(shard, run_id)
        if self.writes_direct:
            buffer = pa.BufferOutputStream()
            yield buffer
            data = buffer.getvalue()
            with foreign_errors(self.uri(shard.output_relpath), "cannot write", error=ShardError):
                with fs.open_output_stream(path) as out:
                    out.write(data)
            return
        with foreign_errors(path, "cannot write", error=ShardError):
            fs.create_dir(path.rpartition("/")[0], recursive=True)
            sink = fs.open_output_stream(path)
        try:
            yield sink
        except BaseException:
            sink.close()
            delete_files(fs, [path])
            raise
        sink.close()


def replace_durably(fs: pafs.FileSystem, source: str, target: str) -> None:
    """Local atomic replace of ``target`` by ``source``, flushed to disk before and after."""
    with open(source, "rb") as f:
        os.fsync(f.fileno())
    parent = target.rpartition("/")[0]
    fs.create_dir(parent, recursive=True)
    fs.move(source, target)
    fd = os.open(parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json(fs: pafs.FileSystem, path: str) -> dict[str, Any]:
    with fs.open_input_stream(path) as f:
        data = json.loads(f.read())
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


_Record = TypeVar("_Record")


def read_json_record(
    fs: pafs.FileSystem,
    path: str,
    record: Callable[..., _Record],
    *,
    where: str,
    error: type[ScorerError],
    advice: str,
) -> _Record | None:
    """A small JSON file as ``record(**fields)``; None when it is absent.

    One that does not parse, or whose fields do not fit, is ``error`` naming ``where`` and what
    a person can do about it (``advice``).
    """
    try:
        return record(**read_json(fs, path))
    except FileNotFoundError:
        return None
    except (TypeError, ValueError) as exc:
        raise error(f"{where}: unreadable ({exc}); {advice}") from exc


def list_files(
    fs: pafs.FileSystem, path: str, *, recursive: bool, where: str
) -> list[pafs.FileInfo]:
    with foreign_errors(where, "cannot list"):
        selector = pafs.FileSelector(path, recursive=recursive, allow_not_found=True)
        infos: list[pafs.FileInfo] = fs.get_file_info(selector)
    return infos


def delete_files(fs: pafs.FileSystem, paths: list[str]) -> None:
    for path in paths:
        with foreign_errors(path, "cannot delete", missing_ok=True):
            fs.delete_file(path)


def delete_dir(fs: pafs.FileSystem, path: str) -> None:
    with foreign_errors(path, "cannot delete", missing_ok=True):
        fs.delete_dir(path)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
