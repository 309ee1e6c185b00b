"""Scores as a Delta Lake table (``--format delta``): publishing committed shards with delta-rs.

``OUTPUT/scores/`` is the table root; its ``_delta_log/`` is written by the ``deltalake`` package
(delta-rs, 1.6.x). The shard protocol of ``manifest`` is unchanged: actors write data files under
``scores/`` exactly as for Parquet, ``commit_shard`` renames them into place (or checks the object
on S3) and writes the commit record. A file there is invisible to Delta readers until a Delta
commit adds it: the commit records stay the ledger of what is scored, the Delta log says what is
published.

Visibility unit: the run. A run that reaches its end (exit 0, 1 or 3) publishes in one Delta
transaction everything the commit records hold and the table does not (``add`` actions), and
removes the table's scorer files that no record names any more (``remove`` actions: the outputs
of changed inputs, or everything an ``--overwrite`` or a rerun with another model replaced). A
reader therefore sees the table of the previous run or of this one, never a night half scored,
and an overwritten day's old scores until the moment its new ones replace them. An interrupted or
killed run publishes nothing; its committed shards are published by the run that resumes it, in
that run's one transaction (so the unit of a resumed job is the job).

Exactly once: publishing is "make the table's current version equal the commit records", computed
afresh under the OUTPUT lock from the log and the records, so a publish replayed after a crash at
any point (before the Delta commit, during it: a log entry is one create-if-absent PUT or a local
hard link, whole or absent; after it, before the run stats) adds nothing twice. Each publish also
carries an application transaction (``APP_ID``, version = the previous publish's + 1) so that a
commit delta-rs retries after it in fact landed conflicts instead of adding the files again.

Data files are immutable in a Delta table (older versions, time travel, point at them), so a run
never writes onto a published name: with Delta a shard's file is ``<today's name>.run-<run_id>
.parquet`` (``run_file_relpath``). What the ``manifest`` may then delete differs (``Published``):
``--overwrite`` drops the records but not the files, superseding drops records and only files never
published, and orphan cleanup spares every file a retained version may reference: the current
version's, and those of runs named in the log's commits (``intent-scorer.runs``). Such files go
with ``DeltaTable.vacuum`` (README). Nothing under ``_delta_log/`` is ever deleted by the scorer.

Schema: the score files' (dictionary-encoded columns as their value type) plus the input's hive
keys as string partition columns, in folder order; a day column's scores are written in ``dt=``
folders of their day (``days``, docs/nights-in-a-column.md), so ``dt`` is one of those keys. Each ``add`` carries the file's size,
modification time and ``numRecords`` (from the commit record: free); no column statistics.

Object storage: local paths and ``s3://``. On S3 delta-rs 1.x commits with conditional PUT
(``If-None-Match``), which AWS S3 (since 2024), MinIO, R2 and the tests' moto server honour, so no
locking provider is needed. A publish that loses a race to another writer of the table (two
scorer runs on one OUTPUT are already kept apart by the lock; think of a compaction job, or a team
appending its own files) is recomputed against the new version and retried: files not written by
the scorer are never removed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote, urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from scorer.errors import ConfigError, OutputConflictError, StorageError
from scorer.pipeline.layout import HIVE_NULL, SCORES
from scorer.pipeline.manifest import CommitRecord
from scorer.pipeline.plan import Plan
from scorer.storage import Location, credential_env, storage_errors

if TYPE_CHECKING:  # imported where used: 0.1 s that a Parquet run need not pay
    from deltalake import DeltaTable

DELTA_LOG = "_delta_log"
APP_ID = "intent-scorer"
"""The application id of the scorer's transactions in the Delta log."""
RUNS_KEY = "intent-scorer.runs"
"""Commit metadata: the runs whose files a commit added (the run ids in their names)."""
RUN_KEY = "intent-scorer.run_id"
"""Commit metadata: the run that made the commit."""
PAUSE_ENV = "SCORER_PAUSE_AT"
"""Test hook: the driver stops itself (SIGSTOP) at the named point of a publish, ``publish``
(the table read, nothing committed) or ``published`` (committed, the run stats not written), so
a fault test kills it at an observed point instead of after a guessed sleep."""

_RUN_SUFFIX = ".run-"
_SHARD_NAME = re.compile(r"-rg\d{5}-\d{5}")
_MAX_PUBLISH_ATTEMPTS = 5
# Object-store credentials delta-rs takes as storage options (it does not share pyarrow's client).
_DELTA_CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def run_file_relpath(relpath: str, run_id: str) -> str:
    """``scores/dt=…/<stem>-rg…-….parquet`` → ``…-….run-<run_id>.parquet``: never a published name."""
    stem = relpath[: -len(".parquet")] if relpath.endswith(".parquet") else relpath
    return f"{stem}{_RUN_SUFFIX}{run_id}.parquet"


def file_run(relpath: str) -> str | None:
    """The run id in a Delta data file's name (``run_file_relpath``); None for other names."""
    name = relpath.rpartition("/")[2]
    if _RUN_SUFFIX not in name or not name.endswith(".parquet"):
        return None
    return name[: -len(".parquet")].rpartition(_RUN_SUFFIX)[2]


def with_run_names(plan: Plan, run_id: str) -> Plan:
    """The plan with each shard to score writing ``run_file_relpath`` (skipped shards keep theirs)."""
    shards = tuple(
        dataclasses.replace(s, output_relpath=run_file_relpath(s.output_relpath, run_id))
        for s in plan.shards
    )
    return dataclasses.replace(plan, shards=shards)


def check_format(output: Location, output_format: str, *, overwrite: bool) -> None:
    """Refuse what would mix the formats in one OUTPUT, and filesystems delta-rs is not wired to.

    A Parquet run on a Delta table would delete files its older versions reference; ``--overwrite``
    replaces the table. A Delta run on Parquet scores publishes the committed files it finds.
    """
    if output_format == "delta":
        _table_uri(output.child(SCORES))  # unsupported filesystem: a ConfigError now
        return
    log = output.child(f"{SCORES}/{DELTA_LOG}")
    with storage_errors(log.uri, "cannot read"):
        is_table = output.filesystem.get_file_info(log.path).type == pafs.FileType.Directory
    if is_table and not overwrite:
        raise OutputConflictError(
            f'{output.uri}: scores/ is a Delta table: pass --format delta (or format = "delta"), '
            "or --overwrite to replace it with plain Parquet"
        )


@dataclass(frozen=True)
class Publication:
    """What a publish did: the table's version after it, and the files it added and removed."""

    version: int | None
    added: int
    removed: int


class ScoresTable:
    """``OUTPUT/scores/`` as a Delta table; also the ``manifest.Published`` of ``Manifest.load``."""

    def __init__(self, output: Location) -> None:
        self.output = output
        self.location = output.child(SCORES)
        self.uri, self.storage_options = _table_uri(self.location)
        self._runs: set[str] | None = None
        self._current: set[str] | None = None

    # -- what the manifest must not delete (``manifest.Published``) ---------------------------

    def keeps(self, relpath: str) -> bool:
        """Whether ``relpath`` (below OUTPUT) may be referenced by a version of the table."""
        if relpath.startswith(f"{SCORES}/{DELTA_LOG}/"):
            return True
        if self._current is None or self._runs is None:
            table = self._open()
            self._current = self._active(table) if table is not None else set()
            self._runs = self._published_runs(table) if table is not None else set()
        return relpath in self._current or file_run(relpath) in self._runs

    # -- publishing ---------------------------------------------------------------------------

    def publish(self, records: Iterable[CommitRecord], run_id: str) -> Publication:
        """One transaction making the current version hold exactly the records' files (of the
        scorer's files; others' are left alone). A no-op when it does already."""
        wanted = {r.output_relpath: r for r in records}
        for attempt in range(1, _MAX_PUBLISH_ATTEMPTS + 1):
            table = self._open()
            active = self._active(table) if table is not None else set()
            adds = sorted(set(wanted) - active)
            removes = sorted(p for p in active - set(wanted) if _is_scorer_file(p))
            if not adds and not removes:
                return Publication(table.version() if table is not None else None, 0, 0)
            _pause("publish")
            from deltalake.exceptions import CommitFailedError

            try:
                version = self._commit(table, [wanted[p] for p in adds], removes, run_id)
            except CommitFailedError as exc:
                if attempt == _MAX_PUBLISH_ATTEMPTS:
                    raise StorageError(
                        f"{self.location.uri}: Delta commit failed {attempt} times against "
                        f"concurrent writers: {exc}; rerun to publish"
                    ) from exc
                continue  # another writer committed first: recompute against its version
            self._current = self._runs = None
            _pause("published")
            return Publication(version, len(adds), len(removes))
        raise AssertionError("unreachable")  # the loop returns or raises

    def _commit(
        self, table: DeltaTable | None, adds: list[CommitRecord], removes: list[str], run_id: str
    ) -> int:
        from deltalake import DeltaTable, Schema
        from deltalake.transaction import (
            AddAction,
            CommitProperties,
            RemoveAction,
            Transaction,
            create_table_with_add_actions,
        )

        fs = self.output.filesystem
        paths = [self.output.child(r.output_relpath).path for r in adds]
        with storage_errors(self.location.uri, "cannot publish"):
            infos = fs.get_file_info(paths) if paths else []
        missing = [r.output_relpath for r, i in zip(adds, infos) if i.type != pafs.FileType.File]
        if missing:
            raise StorageError(
                f"{self.output.child(missing[0]).uri}: committed but missing, not published "
                f"({len(missing)} file(s)); --overwrite rescores"
            )
        keys = _partition_keys(adds[0].output_relpath) if adds else []
        actions: list[AddAction | RemoveAction] = []
        for record, info in zip(adds, infos):
            values = _partition_values(record.output_relpath)
            if list(values) != keys:
                raise StorageError(
                    f"{self.output.child(record.output_relpath).uri}: partition keys "
                    f"{list(values)} differ from {keys}: one Delta table needs one layout"
                )
            actions.append(
                AddAction(
                    path=self._in_table(record.output_relpath),
                    size=info.size,
                    partition_values=values,
                    modification_time=int(info.mtime_ns // 1_000_000) if info.mtime_ns else 0,
                    data_change=True,
                    stats=json.dumps({"numRecords": record.rows}),
                )
            )
        now_ms = int(time.time() * 1000)
        actions += [
            RemoveAction(
                path=self._in_table(p),
                data_change=True,
                deletion_timestamp=now_ms,
                partition_values=_partition_values(p),
            )
            for p in removes
        ]
        runs = sorted({run for r in adds if (run := file_run(r.output_relpath))} | {run_id})
        last = table.transaction_version(APP_ID) if table is not None else None
        properties = CommitProperties(
            custom_metadata={RUN_KEY: run_id, RUNS_KEY: runs},
            app_transactions=[Transaction(APP_ID, (last or 0) + 1)],
        )
        if table is not None:
            schema = table.schema()
            partition_by = table.metadata().partition_columns
            table.create_write_transaction(
                actions,
                "append",
                schema,
                partition_by=partition_by,
                commit_properties=properties,
            )
            table.update_incremental()
            return table.version()
        schema = Schema.from_arrow(self._schema(adds[0].output_relpath, keys))
        create_table_with_add_actions(
            self.uri,
            schema,
            [a for a in actions if isinstance(a, AddAction)],
            mode="error",
            partition_by=keys,
            storage_options=self.storage_options,
            commit_properties=properties,
        )
        return DeltaTable(self.uri, storage_options=self.storage_options).version()

    def _schema(self, relpath: str, keys: list[str]) -> pa.Schema:
        """A score file's schema as the table's: dictionaries as their values, plus the keys."""
        location = self.output.child(relpath)
        with storage_errors(location.uri, "cannot read"):
            with self.output.filesystem.open_input_file(location.path) as f:
                schema = pq.read_schema(f)
        fields = [
            pa.field(f.name, f.type.value_type, f.nullable)
            if pa.types.is_dictionary(f.type)
            else f.remove_metadata()
            for f in schema
            if f.name not in keys
        ]
        return pa.schema(fields + [pa.field(key, pa.string()) for key in keys])

    # -- reading the log ----------------------------------------------------------------------

    def _open(self) -> DeltaTable | None:
        """The table at its latest version (a ``deltalake.DeltaTable``), None before the first publish."""
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        try:
            return DeltaTable(self.uri, storage_options=self.storage_options)
        except TableNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"{self.location.uri}: cannot read the Delta log: {exc}") from exc

    def _active(self, table: DeltaTable) -> set[str]:
        """The current version's files, as relpaths below OUTPUT."""
        paths = pa.table(table.get_add_actions(flatten=True)).column("path").to_pylist()
        return {f"{SCORES}/{unquote(p)}" for p in paths}

    def _published_runs(self, table: DeltaTable) -> set[str]:
        """Runs whose files a retained commit added (their versions can be travelled to)."""
        runs: set[str] = set()
        for commit in table.history():
            named = commit.get(RUNS_KEY)
            if isinstance(named, list):
                runs.update(str(r) for r in named)
        return runs

    def _in_table(self, relpath: str) -> str:
        return relpath[len(SCORES) + 1 :]


def _is_scorer_file(relpath: str) -> bool:
    """Written by the scorer (a shard's name), so a publish may remove it."""
    return file_run(relpath) is not None or _SHARD_NAME.search(relpath) is not None


def _partition_keys(relpath: str) -> list[str]:
    return list(_partition_values(relpath))


def _partition_values(relpath: str) -> dict[str, str | None]:
    """The hive ``key=value`` folders of a file below ``scores/``, in folder order; `HIVE_NULL`
    is a null value (the rows of a day column without a day, docs/nights-in-a-column.md)."""
    folders = relpath.split("/")[1:-1]
    return {
        k: None if v == HIVE_NULL else v
        for k, sep, v in (f.partition("=") for f in folders)
        if sep and k
    }


def _table_uri(location: Location) -> tuple[str, dict[str, str]]:
    """The table's URI and delta-rs storage options (a local path; s3:// with its endpoint)."""
    if location.is_local:
        return location.path, {}
    parts = urlsplit(location.uri)
    if parts.scheme != "s3":
        raise ConfigError(
            f"format: delta supports local paths and s3:// outputs, not {parts.scheme}://"
        )
    query = dict(parse_qsl(parts.query))
    options: dict[str, str] = {}
    if "endpoint_override" in query:
        scheme = query.get("scheme", "https")
        options["AWS_ENDPOINT_URL"] = f"{scheme}://{query['endpoint_override']}"
        if scheme == "http":
            options["AWS_ALLOW_HTTP"] = "true"
    if "region" in query:
        options["AWS_REGION"] = query["region"]
    env = credential_env()
    options.update({k: env[k] for k in _DELTA_CREDENTIALS if k in env})
    if "AWS_REGION" not in options and "AWS_DEFAULT_REGION" in env:
        options["AWS_REGION"] = env["AWS_DEFAULT_REGION"]
    return f"s3://{location.path}", options


def _pause(point: str) -> None:
    if os.environ.get(PAUSE_ENV) == point:
        os.kill(os.getpid(), signal.SIGSTOP)
