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
.parquet`` (``layout.shard_output_relpath``). What the ``manifest`` may then delete differs
(``Published``):
``--overwrite`` drops the records but not the files, superseding drops records and only files never
published, and orphan cleanup spares every file a retained version may reference: the current
version's, and those of runs named in the log's commits (``intent-scorer.runs``). Such files go
with ``DeltaTable.vacuum`` (docs/delta.md). Nothing under ``_delta_log/`` is ever deleted by the scorer.

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

import json
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

import pyarrow as pa

from scorer.errors import ConfigError
from scorer.pipeline.layout import DELTA_LOG, SCORES, file_run, partition_values
from scorer.pipeline.manifest import CommitRecord
from scorer.pipeline.tables import (
    RUN_KEY,
    RUNS_KEY,
    Publication,
    S3Settings,
    changes,
    committed_files,
    layout_keys,
    pause,
    table_schema,
)
from scorer.storage import Location, foreign_errors, translated

if TYPE_CHECKING:  # imported where used: 0.1 s that a Parquet run need not pay
    from deltalake import DeltaTable

APP_ID = "intent-scorer"
"""The application id of the scorer's transactions in the Delta log."""

_MAX_PUBLISH_ATTEMPTS = 5


def check_location(output: Location) -> None:
    """Refuse a filesystem delta-rs is not wired to (a ConfigError now, before scoring)."""
    _table_uri(output.child(SCORES))


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
        if relpath.startswith(f"{DELTA_LOG}/"):
            return True
        if self._current is None or self._runs is None:
            table = self._open()
            self._current = self._active(table) if table is not None else set()
            self._runs = self._published_runs(table) if table is not None else set()
        return relpath in self._current or file_run(relpath) in self._runs

    # -- publishing ---------------------------------------------------------------------------

    def warm_up(self) -> None:
        """Nothing to load ahead: delta-rs imports in ~0.1 s at publish."""

    def publish(
        self, records: Iterable[CommitRecord], run_id: str, scope: frozenset[tuple[str, ...]]
    ) -> Publication:
        """One transaction making the current version hold exactly the records' files (of the
        scorer's files within the run's partitions, ``tables.changes``; others' are left alone).
        A no-op when it does already."""
        wanted = {r.output_relpath: r for r in records}
        for attempt in range(1, _MAX_PUBLISH_ATTEMPTS + 1):
            table = self._open()
            active = self._active(table) if table is not None else set()
            adds, removes = changes(wanted, active, scope)
            if not adds and not removes:
                return _publication(table.version() if table is not None else None, 0, 0)
            pause("publish")
            from deltalake.exceptions import CommitFailedError

            try:
                version = self._commit(table, [wanted[p] for p in adds], removes, run_id)
            except CommitFailedError as exc:
                if attempt == _MAX_PUBLISH_ATTEMPTS:
                    raise translated(
                        exc,
                        self.location.uri,
                        f"Delta commit failed {attempt} times against concurrent writers",
                        advice="rerun to publish",
                    ) from exc
                continue  # another writer committed first: recompute against its version
            self._current = self._runs = None
            pause("published")
            return _publication(version, len(adds), len(removes))
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

        infos = committed_files(self.output, adds)
        keys = layout_keys(self.output, adds)
        actions: list[AddAction | RemoveAction] = []
        for record, info in zip(adds, infos):
            actions.append(
                AddAction(
                    path=self._in_table(record.output_relpath),
                    size=info.size,
                    partition_values=partition_values(record.output_relpath),
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
                partition_values=partition_values(p),
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
        schema = Schema.from_arrow(table_schema(self.output, adds[0].output_relpath, keys))
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

    # -- reading the log ----------------------------------------------------------------------

    def _open(self) -> DeltaTable | None:
        """The table at its latest version (a ``deltalake.DeltaTable``), None before the first publish."""
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        with foreign_errors(self.location.uri, "cannot read the Delta log"):
            try:
                return DeltaTable(self.uri, storage_options=self.storage_options)
            except TableNotFoundError:
                return None

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


def _publication(version: int | None, added: int, removed: int) -> Publication:
    return Publication(
        version, added, removed, f"Delta version {version}", {"delta_version": version}
    )


def _table_uri(location: Location) -> tuple[str, dict[str, str]]:
    """The table's URI and delta-rs storage options (a local path; s3:// with its endpoint)."""
    if location.is_local:
        return location.path, {}
    scheme = urlsplit(location.uri).scheme
    if scheme != "s3":
        raise ConfigError(f"format: delta supports local paths and s3:// outputs, not {scheme}://")
    s3 = S3Settings.of(location)
    options = dict(s3.credentials)
    if s3.endpoint_url:
        options["AWS_ENDPOINT_URL"] = s3.endpoint_url
        if s3.endpoint_url.startswith("http://"):
            options["AWS_ALLOW_HTTP"] = "true"
    if s3.region:
        options["AWS_REGION"] = s3.region
    return f"s3://{location.path}", options
