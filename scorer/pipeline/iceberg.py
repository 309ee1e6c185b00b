"""Scores as an Apache Iceberg table (``--format iceberg``): publishing committed shards with pyiceberg.

``OUTPUT/scores/`` holds the table's data files, named as with Delta (``layout.shard_output_relpath``:
a published file is never rewritten); its metadata (metadata JSON, manifest lists, manifests) goes
to ``scores/_iceberg/`` (the table property ``write.metadata.path``), hidden from hive readers of
``scores/`` as ``_delta_log/`` is. Which metadata file is current is the catalog's: a SQL catalog
(``[iceberg] catalog_uri``: SQLite, PostgreSQL, ... through SQLAlchemy) or a REST catalog; with
none configured on a local OUTPUT, a SQLite catalog at ``OUTPUT/_scorer/iceberg/catalog.db``.

Visibility unit: the run, exactly as with Delta (``tables``): the run's end commits one snapshot
that adds every committed file the current snapshot lacks and removes the scorer's files no
record names any more within the run's partitions (``--overwrite --partition dt=D``: day D's old
files go and its new ones come in that one snapshot). The files are registered, not rewritten:
each becomes a ``DataFile`` with its size, its row count from the commit record and its partition
from its hive folders. The score files carry no Iceberg field ids, so the table has a name mapping
(``schema.name-mapping.default``), and its hive keys are identity partitions of string columns the
files do not hold: Iceberg readers take such a column's value from the partition, as the Iceberg
spec provides for tables migrated from hive folders.

Exactly once: a publish recomputes "make the current snapshot equal the commit records" from the
catalog's current snapshot under the OUTPUT lock, so a publish replayed after a crash at any point
(before the catalog commit; during it: the catalog swaps the metadata pointer in one statement,
whole or not at all; after it, before the run stats) adds nothing twice. The snapshot summary
carries the run that published it (``intent-scorer.run_id``) and the runs whose files it added
(``intent-scorer.runs``), which is how cleanup knows which files older snapshots may reference.
The first publish creates the table and its first snapshot in one catalog commit.

Another writer of the table (a job appending another day) may commit first: pyiceberg's commit
then fails (or, for an append, rebuilds its snapshot on the new one), and the publish is
recomputed against the new snapshot and retried; files the scorer did not write are never removed.
"""

from __future__ import annotations

import importlib
import os
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pyarrow as pa

from scorer.config import IcebergConfig
from scorer.errors import ConfigError, OutputConflictError
from scorer.pipeline.layout import (
    EMBEDDED_CATALOG,
    ICEBERG_METADATA,
    SCORES,
    file_run,
    partition_values,
)
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
from scorer.storage import Location, foreign_errors, redact, translated

if TYPE_CHECKING:  # imported where used: a Parquet run need not pay for pyiceberg
    from pyiceberg.catalog import Catalog
    from pyiceberg.manifest import DataFile
    from pyiceberg.schema import Schema
    from pyiceberg.table import Table

_MAX_PUBLISH_ATTEMPTS = 5


def _import_for_publish() -> None:
    for module in ("sqlalchemy", "pyiceberg.catalog.sql", "pyiceberg.table", "pyiceberg.manifest"):
        importlib.import_module(module)


def check_output(output: Location, config: IcebergConfig) -> None:
    """Before scoring: an object-store OUTPUT needs a catalog of its own (a SQLite file cannot be
    shared there), and pyiceberg is wired to local paths and s3:// here."""
    if output.is_local:
        return
    scheme = urlsplit(output.uri).scheme
    if scheme != "s3":
        raise ConfigError(
            f"format: iceberg supports local paths and s3:// outputs, not {scheme}://"
        )
    if config.catalog_uri is None:
        raise ConfigError(
            f"{output.uri}: format iceberg on object storage needs a catalog: set "
            "iceberg.catalog_uri in the job's config (a PostgreSQL or REST catalog, "
            "docs/iceberg.md); the embedded SQLite catalog is for local outputs only"
        )


class IcebergScores:
    """``OUTPUT/scores/`` as an Iceberg table; also the ``manifest.Published`` of ``Manifest.load``."""

    def __init__(self, output: Location, config: IcebergConfig) -> None:
        self.output = output
        self.config = config
        self.identifier = (config.namespace, config.table)
        if config.catalog_uri is not None:
            self.catalog_uri = config.catalog_uri
        else:
            self.catalog_uri = f"sqlite:///{_local_path(output.child(EMBEDDED_CATALOG))}"
        # What messages and the run stats show: credentials (user info, query) redacted; a SQLite
        # URL has none, and keeps its four slashes.
        secretive = "@" in self.catalog_uri or "?" in self.catalog_uri
        self.shown_uri = redact(self.catalog_uri) if secretive else self.catalog_uri
        self._catalog: Catalog | None = None
        self._current: set[str] | None = None
        self._runs: set[str] | None = None

    @property
    def name(self) -> str:
        return ".".join(self.identifier)

    # -- what the manifest must not delete (``manifest.Published``) ---------------------------

    def keeps(self, relpath: str) -> bool:
        """Whether ``relpath`` (below OUTPUT) may be referenced by a snapshot of the table."""
        if relpath.startswith(f"{ICEBERG_METADATA}/"):
            return True
        if self._current is None or self._runs is None:
            table = self._load()
            self._current = set(self._active(table)) if table is not None else set()
            self._runs = _published_runs(table) if table is not None else set()
        return relpath in self._current or file_run(relpath) in self._runs

    def warm_up(self) -> None:
        """pyiceberg's import (~0.65 s of CPU, its pydantic models mostly) on a thread while the
        run scores: on a 16M-row job of ~4.6 s it was most of the ~0.7 s the publish added at
        the end, where nothing else runs."""
        threading.Thread(target=_import_for_publish, name="iceberg-import", daemon=True).start()

    # -- publishing ---------------------------------------------------------------------------

    def publish(
        self, records: Iterable[CommitRecord], run_id: str, scope: frozenset[tuple[str, ...]]
    ) -> Publication:
        """One snapshot making the current one hold exactly the records' files (of the scorer's
        files within the run's partitions, ``tables.changes``). A no-op when it does already."""
        from pyiceberg.exceptions import (
            CommitFailedException,
            CommitStateUnknownException,
            TableAlreadyExistsError,
            ValidationException,
        )
        from sqlalchemy.exc import OperationalError

        wanted = {r.output_relpath: r for r in records}
        for attempt in range(1, _MAX_PUBLISH_ATTEMPTS + 1):
            table = self._load()
            active = self._active(table) if table is not None else {}
            adds, removes = changes(wanted, active, scope)
            if not adds and not removes:
                return self._publication(table, 0, 0)
            pause("publish")
            try:
                with self._catalog_errors("cannot commit to", passes=(OperationalError,)):
                    table = self._commit(
                        table, [wanted[p] for p in adds], [active[p] for p in removes], run_id
                    )
            except (
                CommitFailedException,  # another writer's snapshot came first
                CommitStateUnknownException,  # landed or not: the next round reads which
                TableAlreadyExistsError,  # another writer created the table first
                ValidationException,  # a file to remove was removed by another writer
                OperationalError,  # a SQL catalog busy (SQLite: "database is locked")
            ) as exc:
                if attempt == _MAX_PUBLISH_ATTEMPTS:
                    raise translated(
                        exc,
                        f"{self.name} in {self.shown_uri}",
                        f"Iceberg commit failed {attempt} times (concurrent writers, a busy "
                        "catalog)",
                        advice="rerun to publish",
                    ) from exc
                time.sleep(0.1 * attempt)
                continue
            self._current = self._runs = None
            pause("published")
            return self._publication(table, len(adds), len(removes))
        raise AssertionError("unreachable")  # the loop returns or raises

    def _commit(
        self, table: Table | None, adds: list[CommitRecord], removes: list[DataFile], run_id: str
    ) -> Table:
        infos = committed_files(self.output, adds)
        keys = layout_keys(self.output, adds)
        expected = None
        if adds:  # the table must take the files as they are (a new one is made for them)
            expected = _iceberg_schema(table_schema(self.output, adds[0].output_relpath, keys))
            if table is not None:
                self._check_table(table, expected, keys)
        files = [
            _data_file(
                self._uri(r.output_relpath), r, info.size, partition_values(r.output_relpath)
            )
            for r, info in zip(adds, infos)
        ]
        runs = sorted({run for r in adds if (run := file_run(r.output_relpath))} | {run_id})
        summary = {RUN_KEY: run_id, RUNS_KEY: ",".join(runs)}
        if table is None:  # nothing to remove from no table: there are files to add
            assert expected is not None
            transaction = self._create(expected, keys)
        else:
            transaction = table.transaction()
        update = transaction.update_snapshot(snapshot_properties=summary)
        if removes:
            with update.overwrite() as overwrite:
                for data_file in files:
                    overwrite.append_data_file(data_file)
                for data_file in removes:
                    overwrite.delete_data_file(data_file)
        else:
            with update.fast_append() as append:
                for data_file in files:
                    append.append_data_file(data_file)
        return transaction.commit_transaction()

    def _create(self, schema: Schema, keys: list[str]) -> Any:
        """A transaction that creates the table with its first snapshot in one catalog commit."""
        from pyiceberg.partitioning import PartitionField, PartitionSpec
        from pyiceberg.table.name_mapping import create_mapping_from_schema
        from pyiceberg.transforms import IdentityTransform

        spec = PartitionSpec(
            *(
                PartitionField(
                    source_id=schema.find_field(key).field_id,
                    field_id=1000 + i,
                    transform=IdentityTransform(),
                    name=key,
                )
                for i, key in enumerate(keys)
            )
        )
        location = self._uri(SCORES)
        catalog = self._open_catalog()
        catalog.create_namespace_if_not_exists(self.config.namespace)
        return catalog.create_table_transaction(
            self.identifier,
            schema=schema,
            location=location,
            partition_spec=spec,
            properties={
                "write.metadata.path": self._uri(ICEBERG_METADATA),
                "schema.name-mapping.default": create_mapping_from_schema(schema).model_dump_json(),
            },
        )

    def _check_table(self, table: Table, expected: Schema, keys: list[str]) -> None:
        """An existing table must take the score files as they are: same columns and types,
        identity partitions on the hive keys, and a name mapping (the files have no field ids)."""
        ours = {f.name: f.field_type for f in expected.fields}
        theirs = {f.name: f.field_type for f in table.schema().fields}
        where = f"Iceberg table {self.name} in {self.shown_uri}"
        for name in sorted(ours.keys() | theirs.keys()):
            if ours.get(name) != theirs.get(name):
                raise OutputConflictError(
                    f"{where}: column {name!r} is {theirs.get(name) or 'absent'} in the table, "
                    f"{ours.get(name) or 'absent'} in the scores: the schema disagrees; write to "
                    "another table (iceberg.table) or migrate this one"
                )
        schema = table.schema()
        partitioned = [
            schema.find_column_name(f.source_id) if str(f.transform) == "identity" else str(f)
            for f in table.spec().fields
        ]
        if partitioned != keys:
            raise OutputConflictError(
                f"{where}: partitioned by {partitioned}, the scores by their hive keys {keys}"
            )
        if "schema.name-mapping.default" not in table.properties:
            raise OutputConflictError(
                f"{where}: has no schema.name-mapping.default, which the score files (no field "
                "ids) need to be read"
            )

    def _publication(self, table: Table | None, added: int, removed: int) -> Publication:
        snapshot = table.current_snapshot() if table is not None else None
        snapshot_id = snapshot.snapshot_id if snapshot is not None else None
        described = {
            "catalog_uri": self.shown_uri,
            "table": self.name,
            "snapshot_id": snapshot_id,
        }
        return Publication(
            snapshot_id, added, removed, f"Iceberg snapshot {snapshot_id}", {"iceberg": described}
        )

    # -- reading the catalog ------------------------------------------------------------------

    def _load(self) -> Table | None:
        """The table at its current snapshot; None before the first publish."""
        from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError

        if self.config.catalog_uri is None and not os.path.exists(
            _local_path(self.output.child(EMBEDDED_CATALOG))
        ):
            return None  # reading must not create the embedded catalog
        with self._catalog_errors("cannot read"):
            try:
                return self._open_catalog().load_table(self.identifier)
            except (NoSuchTableError, NoSuchNamespaceError):
                return None

    def _active(self, table: Table) -> dict[str, DataFile]:
        """The current snapshot's data files below ``scores/``, by relpath below OUTPUT (files
        elsewhere are another writer's: never the scorer's to remove)."""
        from pyiceberg.manifest import DataFileContent

        snapshot = table.current_snapshot()
        if snapshot is None:
            return {}
        prefix = self._uri(SCORES) + "/"
        active = {}
        with self._catalog_errors("cannot read the manifests of"):
            for manifest in snapshot.manifests(table.io):
                for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
                    path = entry.data_file.file_path
                    if entry.data_file.content == DataFileContent.DATA and path.startswith(prefix):
                        active[f"{SCORES}/{path[len(prefix) :]}"] = entry.data_file
        return active

    def _open_catalog(self) -> Catalog:
        if self._catalog is None:
            from pyiceberg.catalog import load_catalog

            if self.config.catalog_uri is None:
                os.makedirs(
                    os.path.dirname(_local_path(self.output.child(EMBEDDED_CATALOG))), exist_ok=True
                )
            properties = {
                "uri": self.catalog_uri,
                **self._io_properties(),
                **self.config.properties,
            }
            from sqlalchemy.exc import OperationalError

            with self._catalog_errors("cannot open"):
                for attempt in range(1, _MAX_PUBLISH_ATTEMPTS + 1):
                    try:
                        self._catalog = load_catalog(self.config.catalog_name, **properties)
                        break
                    except OperationalError:
                        # A SQL catalog creates its tables on first open: two openers of a new
                        # one (a reader, another job) race "table ... already exists"; the next
                        # try finds the tables there.
                        if attempt == _MAX_PUBLISH_ATTEMPTS:
                            raise
                        time.sleep(0.1 * attempt)
        assert self._catalog is not None
        return self._catalog

    def _io_properties(self) -> dict[str, str]:
        """pyiceberg's FileIO settings: on a local OUTPUT ``iceberg_io.LocalFileIO``; for an
        s3:// OUTPUT its endpoint, region and credentials (pyiceberg's pyarrow FileIO)."""
        if self.output.is_local:
            return {"py-io-impl": "scorer.pipeline.iceberg_io.LocalFileIO"}
        s3 = S3Settings.of(self.output)
        properties = {
            "s3.access-key-id": s3.credentials.get("AWS_ACCESS_KEY_ID"),
            "s3.secret-access-key": s3.credentials.get("AWS_SECRET_ACCESS_KEY"),
            "s3.session-token": s3.credentials.get("AWS_SESSION_TOKEN"),
            "s3.endpoint": s3.endpoint_url,
            "s3.region": s3.region,
        }
        return {k: v for k, v in properties.items() if v}

    def _uri(self, relpath: str) -> str:
        """The URI a table names a file below OUTPUT by."""
        location = self.output.child(relpath)
        if location.is_local:
            return f"file://{_local_path(location)}"
        return f"s3://{location.path}"

    @contextmanager
    def _catalog_errors(
        self, doing: str, passes: tuple[type[Exception], ...] = ()
    ) -> Iterator[None]:
        """A catalog or object store that fails (unreachable database, driver not installed,
        denied) becomes a StorageError naming the table and the catalog, its secrets redacted
        (``foreign_errors``); what the publish handles itself (a commit another writer won, a
        table not made yet) and ``passes`` go through."""
        from pyiceberg.exceptions import (
            CommitFailedException,
            CommitStateUnknownException,
            NoSuchNamespaceError,
            NoSuchTableError,
            NotInstalledError,
            TableAlreadyExistsError,
            ValidationException,
        )

        where = f"{self.name} in {self.shown_uri}"
        handled: tuple[type[BaseException], ...] = (
            CommitFailedException,
            CommitStateUnknownException,
            TableAlreadyExistsError,
            ValidationException,
            NoSuchTableError,
            NoSuchNamespaceError,
            *passes,
        )
        not_installed: tuple[type[BaseException], ...] = (NotInstalledError, ModuleNotFoundError)
        with (
            foreign_errors(
                f"iceberg.catalog_uri: {where}",
                "cannot load the catalog's driver",
                error=ConfigError,
                foreign=not_installed,
                passes=handled,
                advice="install it, e.g. psycopg2-binary for PostgreSQL",
            ),
            foreign_errors(
                where,
                f"{doing} the catalog",
                foreign=(Exception,),
                passes=(*handled, *not_installed),
                first_line=True,
            ),
        ):
            yield


def _iceberg_schema(schema: pa.Schema) -> Schema:
    """The score files' Arrow schema as an Iceberg schema with fresh ids (the ones the catalog
    gives a new table, so that the name mapping made from it matches). Every column optional:
    the files' nullability is theirs, the table's a promise to every later writer.

    The score columns' types map here; other types (a kept input column's) through pyiceberg's
    own conversion, which imports pyiceberg.io.pyarrow and with it pandas (~1 s on two busy
    cores: most of what publishing would cost a run)."""
    from pyiceberg import types
    from pyiceberg.schema import Schema, assign_fresh_schema_ids

    simple = {
        pa.bool_(): types.BooleanType(),
        pa.int8(): types.IntegerType(),
        pa.int16(): types.IntegerType(),
        pa.int32(): types.IntegerType(),
        pa.int64(): types.LongType(),
        pa.float32(): types.FloatType(),
        pa.float64(): types.DoubleType(),
        pa.string(): types.StringType(),
        pa.large_string(): types.StringType(),
        pa.date32(): types.DateType(),
    }
    if all(f.type in simple for f in schema):
        fields = [
            types.NestedField(i, f.name, simple[f.type], required=False)
            for i, f in enumerate(schema, start=1)
        ]
        return assign_fresh_schema_ids(Schema(*fields))
    from pyiceberg.catalog import Catalog

    nullable = pa.schema([f.with_nullable(True) for f in schema])
    # pyiceberg's own Arrow → Iceberg conversion (the one create_table applies to Arrow schemas)
    return assign_fresh_schema_ids(Catalog._convert_schema_if_needed(nullable))


def _data_file(
    uri: str, record: CommitRecord, size: int, values: dict[str, str | None]
) -> DataFile:
    """A score file registered as it is: its size, its rows from the commit record (free), its
    partition from its hive folders; no column statistics (readers prune on partitions)."""
    from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
    from pyiceberg.typedef import Record

    return DataFile.from_args(
        content=DataFileContent.DATA,
        file_path=uri,
        file_format=FileFormat.PARQUET,
        partition=Record(*values.values()),
        record_count=record.rows,
        file_size_in_bytes=size,
    )


def _published_runs(table: Table) -> set[str]:
    """Runs whose files a retained snapshot added (time travel can reach them)."""
    runs: set[str] = set()
    for snapshot in table.metadata.snapshots:
        named = snapshot.summary[RUNS_KEY] if snapshot.summary is not None else None
        if named:
            runs.update(named.split(","))
    return runs


def _local_path(location: Location) -> str:
    return os.path.abspath(location.path)
