"""Scores as a table format (``--format delta`` / ``--format iceberg``): what both have in common.

A table format's log (Delta) or catalog (Iceberg) decides what readers of ``OUTPUT/scores/`` see;
the shard protocol of ``manifest`` is unchanged under it. The visibility unit is the run: at its
end one commit makes the table's current version hold exactly the files the commit records name
(of the scorer's files; others' are left alone), so that a publish replayed after a crash at any
point adds nothing twice (docs/delta.md, docs/iceberg.md).

What this module holds, for ``delta`` and ``iceberg`` alike, below both: what a publish is
(``ScoresTableFormat``, ``Publication``), which files a publish adds and removes, the committed
files as a table takes them, the commit metadata keys, and the test hook that stops a driver
inside a publish. A run's data files are named by ``layout`` (``shard_output_relpath(run_id=…)``:
a published file is immutable, so a run never writes onto a published name); which format a run
publishes to is chosen above both formats, in ``publish``.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import parse_qsl, urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from scorer.errors import StorageError
from scorer.pipeline.layout import SCORES, is_scorer_file, partition_folders, partition_values
from scorer.pipeline.manifest import CommitRecord
from scorer.pipeline.plan import Plan
from scorer.storage import Location, credential_env, foreign_errors

PAUSE_ENV = "SCORER_PAUSE_AT"
"""Test hook only: the driver stops itself (SIGSTOP) at the named point of a publish, ``publish``
(the table read, nothing committed) or ``published`` (committed, the run stats not written), so
a fault test kills it at an observed point instead of after a guessed sleep."""

RUN_KEY = "intent-scorer.run_id"
"""Commit metadata: the run that made the commit (the marker of a publish)."""
RUNS_KEY = "intent-scorer.runs"
"""Commit metadata: the runs whose files a commit added (the run ids in their names)."""

_CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


@dataclass(frozen=True)
class Publication:
    """What a publish did: the table's version after it, the files it added and removed, how
    to name that version in a message, and the run summary's fields that record it."""

    version: int | None
    added: int
    removed: int
    label: str
    summary: Mapping[str, object] = field(default_factory=dict)


class ScoresTableFormat(Protocol):
    """``OUTPUT/scores/`` as a table; also the ``manifest.Published`` of ``Manifest.load``."""

    def keeps(self, relpath: str) -> bool:
        """Whether ``relpath`` (below OUTPUT) may be referenced by a version of the table."""
        ...

    def publish(
        self, records: Iterable[CommitRecord], run_id: str, scope: frozenset[tuple[str, ...]]
    ) -> Publication:
        """One commit making the current version hold the records' files (``changes``)."""
        ...

    def warm_up(self) -> None:
        """Load what ``publish`` needs while the run scores, off the job's critical path.
        Called once the driver's worker processes are forked (a fork must not copy a thread
        in the middle of an import)."""
        ...


def plan_scope(plan: Plan) -> frozenset[tuple[str, ...]]:
    """The partitions (hive folders below ``scores/``) a run's plan covers, scored or skipped:
    what its publish may replace. ``--overwrite --partition dt=D`` replaces day D alone."""
    return frozenset(partition_folders(s.output_relpath) for s in (*plan.shards, *plan.skipped))


def changes(
    wanted: Iterable[str], active: Iterable[str], scope: frozenset[tuple[str, ...]]
) -> tuple[list[str], list[str]]:
    """What a publish adds (the wanted files the table lacks) and removes (the table's scorer
    files that no record names any more, within the run's partitions)."""
    wanted, active = set(wanted), set(active)
    adds = sorted(wanted - active)
    removes = sorted(
        p for p in active - wanted if is_scorer_file(p) and partition_folders(p) in scope
    )
    return adds, removes


def committed_files(output: Location, records: list[CommitRecord]) -> list[pafs.FileInfo]:
    """The records' files as they are on storage (size, modification time), in order; a
    StorageError when one is missing: a table must never name an absent file."""
    paths = [output.child(r.output_relpath).path for r in records]
    with foreign_errors(output.child(SCORES).uri, "cannot publish"):
        infos = output.filesystem.get_file_info(paths) if paths else []
    missing = [r.output_relpath for r, i in zip(records, infos) if i.type != pafs.FileType.File]
    if missing:
        raise StorageError(
            f"{output.child(missing[0]).uri}: committed but missing, not published "
            f"({len(missing)} file(s)); --overwrite rescores"
        )
    return infos


def layout_keys(output: Location, records: list[CommitRecord]) -> list[str]:
    """The hive keys of the records' files, in folder order: one table needs one layout."""
    keys = list(partition_values(records[0].output_relpath)) if records else []
    for record in records:
        values = list(partition_values(record.output_relpath))
        if values != keys:
            raise StorageError(
                f"{output.child(record.output_relpath).uri}: partition keys {values} differ "
                f"from {keys}: one table needs one layout"
            )
    return keys


def table_schema(output: Location, relpath: str, keys: list[str]) -> pa.Schema:
    """A score file's schema as a table's: dictionaries as their values, plus the hive keys as
    string columns, in folder order."""
    location = output.child(relpath)
    with foreign_errors(location.uri, "cannot read"):
        with output.filesystem.open_input_file(location.path) as f:
            schema = pq.read_schema(f)
    fields = [
        pa.field(f.name, f.type.value_type, f.nullable)
        if pa.types.is_dictionary(f.type)
        else f.remove_metadata()
        for f in schema
        if f.name not in keys
    ]
    return pa.schema(fields + [pa.field(key, pa.string()) for key in keys])


@dataclass(frozen=True)
class S3Settings:
    """Where an ``s3://`` location's objects are, for a table library with its own client
    (delta-rs, pyiceberg's): from the URI's options and the standard AWS variables."""

    endpoint_url: str | None
    region: str | None
    credentials: Mapping[str, str] = field(repr=False)
    """AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN where set: never log them."""

    @classmethod
    def of(cls, location: Location) -> S3Settings:
        query = dict(parse_qsl(urlsplit(location.uri).query))
        endpoint = None
        if "endpoint_override" in query:
            endpoint = f"{query.get('scheme', 'https')}://{query['endpoint_override']}"
        env = credential_env()
        credentials = {k: env[k] for k in _CREDENTIALS if k in env}
        return cls(endpoint, query.get("region") or env.get("AWS_DEFAULT_REGION"), credentials)


def pause(point: str) -> None:
    """``PAUSE_ENV``: stop here when a fault test asks to, the first time only (a publish that
    retries against another writer passes the point again)."""
    if os.environ.get(PAUSE_ENV) == point and point not in _paused:
        _paused.add(point)
        os.kill(os.getpid(), signal.SIGSTOP)


_paused: set[str] = set()
