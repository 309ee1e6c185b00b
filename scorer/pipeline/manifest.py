"""Exactly-once output: commit records, atomic commits and orphan cleanup (where files go: `layout`).

The commit record is the commit point: a shard is committed when its record exists and matches
the model's sha256 and the digest of the output options, and each of its pieces (row groups of
one input file; a shard may pack several files of one folder) matches that file's fingerprint.
A record is the one commit point of the shard's one output file, whatever the number of files.
Records written before shards packed files name one file in flat fields (``input_path``,
``rg_start``, ...); they load as a record of one piece, so older OUTPUT folders resume.

A piece names its file by identity (where it is: ``plan.InputFile.identity``), and the records
are filed by it: a different file never supersedes another's scores, however alike their paths
below INPUT. Records of releases up to 0.2.0 carry no identity; ``adopt_identities`` derives it
from the path they name. A record counts only while its score file exists: ``cleanup`` drops
the records whose file is gone, so their rows are scored again instead of skipped for good.

Local filesystem: the actor writes the shard under ``_scorer/tmp/<run_id>/``; ``commit_shard``
flushes it to disk, renames it onto its final name (an atomic replace), then writes the record
the same way (temporary file, fsync, rename, fsync of the folder). Nothing half-written is ever
under ``scores/``, and a power loss cannot leave a record naming an empty file.

Object storage (``s3://``): a rename there is a copy and a delete, not atomic, and readers of
``scores/`` must never see a file no record names (docs/exactly-once.md, "What a reader of
scores/ sees"). ``OutputLayout.open_shard_sink`` assembles the shard's Parquet in memory (its
compressed size: a few MB per million rows) and uploads it whole, in one request, under
``_scorer/tmp/<run_id>/``; an actor that fails mid-shard uploads nothing. ``commit_shard``
checks the staged object is there, writes the record (one PUT: the commit point), then copies
the object into place server-side; the staged objects go at the end of the run, in bulk
(``discard_temp``), not one request per shard on the commit thread. A crash between record
and copy is rolled forward by the next run's ``cleanup``.

Every record written and every deletion first calls ``Manifest.fence`` (the driver sets it to
``OutputLock.check``): a run that lost the lock stops there (``LockLostError``).

What a crash leaves, and what clears it (``Manifest.cleanup``, run under the lock at the start
of the next run):

- temporary files of dead runs: deleted;
- a committed shard whose score file is not in place but staged (object storage: a crash
  between record and copy): copied into place;
- a file under ``scores/`` that no record names (locally, a crash between the rename and the
  record): deleted, because the rerun may plan other boundaries (another ``--shard-rows``) and
  its rows would then be there twice;
- a changed input file: ``Manifest.supersede`` deletes its records first, then its outputs, so a
  crash in between leaves only unreferenced files (above), never a record without its file. A
  record packing that file with others goes whole (its one output file holds them all): the
  other files of that shard are simply rescored with it.

``Manifest.reset`` (``--overwrite``) deletes in the same order: every record, then ``scores/``,
then ``output.json``; ``Manifest.claim`` then records the new model. Old and new rows of an
input are never visible together; rows not yet rescored are absent until their shard commits.

With ``--format delta`` (``Manifest.load(..., published=delta.ScoresTable(...))``) the score
files are a Delta table's data files, which its older versions reference: ``reset`` keeps them,
``supersede`` deletes only files never published, and ``cleanup`` spares whatever ``published``
keeps (and never touches ``scores/_delta_log/``); see ``delta``.

A ``Manifest`` is not thread-safe: the driver commits from one thread.

"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from typing import Any, Protocol

import pyarrow.fs as pafs

from scorer.errors import OutputConflictError, ShardError, StorageError
from scorer.pipeline.day_selection import piece_days
from scorer.pipeline.footers import adopt_legacy
from scorer.pipeline.layout import (
    COMMITS,
    DELTA_LOG,
    OUTPUT_STATE,
    SCORES,
    TMP,
    OutputLayout,
    commit_record_relpath,
    delete_dir,
    delete_files,
    list_files,
    now_iso,
    read_json,
    read_json_record,
    replace_durably,
    temp_relpath,
)
from scorer.pipeline.plan import InputFile, Piece, Shard
from scorer.storage import Location, foreign_errors


def options_digest(key_column: str, keep: Iterable[str]) -> str:
    """Digest of the options that change output bytes: the key and the kept columns.

    Commit records and ``output.json`` of existing OUTPUT folders hold this exact value, so its
    recipe (JSON of the two in this order, default separators, 16 hex digits) never changes.
    """
    options = {"key_column": key_column, "keep": list(keep)}
    return hashlib.sha256(json.dumps(options).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class CommittedPiece:
    """The row groups of one input file that a commit record covers."""

    input_relpath: str
    input_path: str
    rg_start: int
    rg_stop: int
    input_fingerprint: str
    rows: int
    input_id: str | None = None
    """The file's identity (`plan.InputFile.identity`). Records of releases up to 0.2.0 have
    none: `Manifest.adopt_identities` derives it from ``input_path``."""

    @property
    def key(self) -> str:
        """What the manifest files this piece under: its file's identity, or for a record not
        yet adopted its path."""
        return self.input_id or f"path:{self.input_path}"

    def overlaps(self, rg_start: int, rg_stop: int) -> bool:
        return self.rg_start < rg_stop and rg_start < self.rg_stop


@dataclass(frozen=True)
class CommitRecord:
    """What committed one shard: ``_scorer/commits/<record_key(shard_id)>.json``.

    ``input_path``, ``input_relpath``, ``rg_start``, ``rg_stop`` and ``input_fingerprint`` are
    its first piece's (all of it for a shard of one file).
    """

    shard_id: str
    pieces: tuple[CommittedPiece, ...]
    model_sha256: str
    options_digest: str
    output_relpath: str
    rows: int
    run_id: str
    committed_at: str

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CommitRecord:
        if "pieces" in data:
            pieces = tuple(CommittedPiece(**piece) for piece in data["pieces"])
        else:  # written before shards packed files: the one file in flat fields
            flat = [f.name for f in fields(CommittedPiece) if f.name != "rows"]
            pieces = (CommittedPiece(**{name: data[name] for name in flat}, rows=data["rows"]),)
        if not pieces:
            raise ValueError("a commit record without pieces")
        values = {f.name: data[f.name] for f in fields(cls) if f.name != "pieces"}
        return cls(pieces=pieces, **values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def input_relpath(self) -> str:
        """The first piece's file (a one-file shard's only one)."""
        return self.pieces[0].input_relpath

    def produced_by(self, model_sha256: str, options_digest: str) -> bool:
        return (self.model_sha256, self.options_digest) == (model_sha256, options_digest)

    def matches(self, fingerprint: str, model_sha256: str, options_digest: str) -> bool:
        """This model and options, and ``fingerprint`` for its first file."""
        return self.pieces[0].input_fingerprint == fingerprint and self.produced_by(
            model_sha256, options_digest
        )

    def stale(self, fingerprints: Mapping[str, str]) -> bool:
        """Whether a file of its pieces changed: ``fingerprints`` by identity, of files now
        listed."""
        return any(
            fingerprints.get(p.key, p.input_fingerprint) != p.input_fingerprint for p in self.pieces
        )


@dataclass(frozen=True)
class OutputClaim:
    """``_scorer/output.json``: whose scores this OUTPUT holds."""

    model_name: str
    model_sha256: str
    options_digest: str
    run_id: str
    claimed_at: str


class Published(Protocol):
    """The files a table format's log may reference (``delta.ScoresTable``)."""

    def keeps(self, relpath: str) -> bool:
        """Whether ``relpath`` (below OUTPUT) must stay on storage although no record names it."""
        ...


@dataclass(frozen=True)
class CleanupReport:
    """What ``Manifest.cleanup`` deleted."""

    temp_runs: tuple[str, ...]
    """Run ids whose temporary files were deleted."""
    orphans: tuple[str, ...]
    """Files under ``scores/`` (relative to OUTPUT) that no commit record named."""
    bad_records: tuple[str, ...]
    """Commit records that could not be parsed (their shards are rescored)."""
    lost: tuple[CommitRecord, ...] = ()
    """Records whose score file is gone (deleted by a lifecycle rule or a person): dropped, so
    that their rows are scored again instead of being skipped for good."""
    rolled_forward: tuple[str, ...] = ()
    """Score files (relative to OUTPUT) of committed shards copied into place from where a
    crashed run staged them (object storage: see the module docstring)."""


class Manifest:
    """The commit records of one OUTPUT, and every change made to what OUTPUT holds.

    Call the mutating methods while holding ``OutputLock``. Typical driver sequence::

        with OutputLock(out, run_id):
            manifest = Manifest.load(out)
            manifest.claim(model_name=..., model_sha256=..., options_digest=..., run_id=run_id,
                           overwrite=overwrite)
            manifest.cleanup(run_id)
            manifest.adopt_legacy_fingerprints(files)  # records of releases up to 0.1.0
            manifest.supersede(files)
            plan = plan_shards(inputs, shard_rows, manifest.committed_ranges(files, ...))
            ...  # actors write through manifest.layout.open_shard_sink(shard, run_id)
            manifest.commit_shard(shard, run_id=run_id, rows=rows, ...)
            manifest.discard_temp(run_id)
    """

    def __init__(
        self,
        layout: OutputLayout,
        records: Iterable[CommitRecord] = (),
        bad_records: Iterable[str] = (),
        published: Published | None = None,
    ) -> None:
        self.layout = layout
        self.published = published
        self.fence: Callable[[], None] = _unfenced
        """Called before every record written and every deletion: ``OutputLock.check``, which
        raises ``LockLostError`` once this run no longer holds the lock (the driver sets it)."""
        self._records: dict[str, CommitRecord] = {}
        self._by_input: dict[str, dict[str, CommitRecord]] = {}
        self._bad_records = tuple(bad_records)
        for record in records:
            self._remember(record)

    @classmethod
    def load(
        cls, location: Location, *, max_workers: int = 16, published: Published | None = None
    ) -> Manifest:
        """Read every commit record under OUTPUT (in parallel: one request each on S3)."""
        layout = OutputLayout(location)
        fs = location.filesystem
        infos = list_files(fs, layout.path(COMMITS), recursive=False, where=layout.uri(COMMITS))
        paths = [i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".json")]

        def read(path: str) -> CommitRecord | str:
            try:
                return CommitRecord.from_dict(read_json(fs, path))
            except (KeyError, TypeError, ValueError):
                return path

        with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(paths) or 1))) as pool:
            loaded = list(pool.map(read, paths))
        bad = [p for p in loaded if isinstance(p, str)]
        for path in bad:
            warnings.warn(
                f"{path}: unreadable commit record, its shard will be rescored", stacklevel=2
            )
        return cls(layout, [r for r in loaded if isinstance(r, CommitRecord)], bad, published)

    @property
    def records(self) -> Mapping[str, CommitRecord]:
        """Commit records by shard id."""
        return dict(self._records)

    def is_committed(
        self, shard: Shard | str, fingerprint: str, model_sha256: str, options_digest: str
    ) -> bool:
        """Whether ``shard`` (or a shard id) has a record for this input, model and options;
        ``fingerprint`` is its first file's (a `Shard`'s other pieces are checked too)."""
        record = self._records.get(shard.shard_id if isinstance(shard, Shard) else shard)
        if record is None or not record.matches(fingerprint, model_sha256, options_digest):
            return False
        if isinstance(shard, Shard):
            return not record.stale({p.input_id: p.fingerprint for p in shard.pieces})
        return True

    def committed_ranges(
        self, files: Iterable[InputFile], *, model_sha256: str, options_digest: str
    ) -> dict[str, list[tuple[int, int, str]]]:
        """For ``plan_shards``: each file's committed ``(rg_start, rg_stop, shard_id)`` ranges,
        by its relpath (`plan.with_output_names` gives every identity one).

        A record counts when it is of this model and options and none of its files changed
        (``supersede`` drops those; a dry run, which does not, plans them as a run would).
        """
        files = list(files)
        fingerprints = {f.identity: f.fingerprint for f in files}
        ranges: dict[str, list[tuple[int, int, str]]] = {}
        for f in files:
            for record in self._by_input.get(f.identity, {}).values():
                if record.produced_by(model_sha256, options_digest) and not record.stale(
                    fingerprints
                ):
                    ranges.setdefault(f.relpath, []).extend(
                        (p.rg_start, p.rg_stop, record.shard_id)
                        for p in record.pieces
                        if p.key == f.identity
                    )
        return {relpath: sorted(found) for relpath, found in ranges.items()}

    def check(self, *, model_name: str, model_sha256: str, options_digest: str) -> None:
        """Raise ``OutputConflictError`` if OUTPUT holds another model's scores or other options."""
        claim = self._read_claim()
        shas = {r.model_sha256 for r in self._records.values()}
        digests = {r.options_digest for r in self._records.values()}
        if claim:
            shas.add(claim.model_sha256)
            digests.add(claim.options_digest)
        where = self.layout.location.uri
        if shas - {model_sha256}:
            if claim and claim.model_sha256 != model_sha256:
                held = f"model {claim.model_name} (sha256 {claim.model_sha256[:12]})"
            else:
                held = f"another model (sha256 {sorted(shas - {model_sha256})[0][:12]})"
            raise OutputConflictError(
                f"{where} holds scores of {held}, not of {model_name} "
                f"(sha256 {model_sha256[:12]}): pass --overwrite to replace them, "
                "or choose another OUTPUT"
            )
        if digests - {options_digest}:
            raise OutputConflictError(
                f"{where} holds scores written with other output options (key or kept columns): "
                "pass --overwrite to replace them, or choose another OUTPUT"
            )

    def claim(
        self,
        *,
        model_name: str,
        model_sha256: str,
        options_digest: str,
        run_id: str,
        overwrite: bool = False,
    ) -> None:
        """Record in ``output.json`` that OUTPUT holds this model's scores.

        Without ``overwrite`` a conflict (``check``) raises; with it, ``reset`` runs first.
        """
        if overwrite:
            self.reset()
        else:
            self.check(
                model_name=model_name, model_sha256=model_sha256, options_digest=options_digest
            )
        claim = OutputClaim(model_name, model_sha256, options_digest, run_id, now_iso())
        self._write_json(OUTPUT_STATE, asdict(claim), run_id)

    def reset(self) -> None:
        """Drop every commit record, then every score file, then ``output.json`` (``--overwrite``).

        Records go first: a crash part-way leaves only unreferenced score files, which
        ``cleanup`` deletes, and never a record whose file is gone.
        """
        fs = self.layout.location.filesystem
        self.fence()
        # A Delta table's files stay: its current version serves readers until the new one.
        for relpath in (COMMITS,) if self.published else (COMMITS, SCORES):
            with foreign_errors(self.layout.uri(relpath), "cannot delete"):
                fs.delete_dir_contents(self.layout.path(relpath), missing_dir_ok=True)
        delete_files(fs, [self.layout.path(OUTPUT_STATE)])
        self._records.clear()
        self._by_input.clear()

    def cleanup(self, run_id: str) -> CleanupReport:
        """Delete what crashed runs left: their temporary files, unreferenced score files, and
        unparsable records. Only under the lock: any other run's temp files are then dead."""
        fs = self.layout.location.filesystem
        self.fence()
        rolled = self._roll_forward()
        temp_runs = []
        for info in list_files(
            fs, self.layout.path(TMP), recursive=False, where=self.layout.uri(TMP)
        ):
            name = info.path.rpartition("/")[2]
            if name == run_id:
                continue
            if info.type == pafs.FileType.Directory:
                delete_dir(fs, info.path)
            else:
                delete_files(fs, [info.path])
            temp_runs.append(name)
        delete_files(fs, list(self._bad_records))
        root = self.layout.path(SCORES).rpartition("/")[0]
        listed = list_files(
            fs, self.layout.path(SCORES), recursive=True, where=self.layout.uri(SCORES)
        )
        lost = self._without_files(listed)
        self.fence()
        delete_files(fs, [self.layout.path(commit_record_relpath(r.shard_id)) for r in lost])
        referenced = {self.layout.path(r.output_relpath) for r in self._records.values()}
        orphans = [
            i.path
            for i in listed
            if i.type == pafs.FileType.File
            and i.path.endswith(".parquet")
            and i.path not in referenced
            and not self._published(i.path[len(root) + 1 :])
        ]
        delete_files(fs, orphans)
        report = CleanupReport(
            temp_runs=tuple(sorted(temp_runs)),
            rolled_forward=rolled,
            orphans=tuple(sorted(p[len(root) + 1 :] for p in orphans)),
            bad_records=self._bad_records,
            lost=lost,
        )
        self._bad_records = ()
        return report

    def forget_records_without_files(self) -> tuple[CommitRecord, ...]:
        """In memory only, what ``cleanup`` drops from storage: the records whose score file is
        gone (a dry run plans their shards as the run will)."""
        fs = self.layout.location.filesystem
        listed = list_files(
            fs, self.layout.path(SCORES), recursive=True, where=self.layout.uri(SCORES)
        )
        return self._without_files(listed)

    def _without_files(self, listed: Iterable[pafs.FileInfo]) -> tuple[CommitRecord, ...]:
        """Forget the records whose score file is not among ``listed`` (the files under
        ``scores/``): a record counts only while its file exists."""
        present = {i.path for i in listed if i.type == pafs.FileType.File}
        lost = tuple(
            r for r in self._records.values() if self.layout.path(r.output_relpath) not in present
        )
        for record in lost:
            self._forget(record)
        return lost

    def adopt_identities(self, input_location: Location) -> tuple[CommitRecord, ...]:
        """Give the pieces of records written by releases up to 0.2.0, which named a file by its
        path alone, the identity of the file at that path (in memory; the records on disk keep
        what was written), so that their OUTPUT resumes instead of rescoring.

        Those releases named a file by its path below INPUT: one file scored through two roots
        was committed twice, under two names. Such a file keeps the first of its names; the
        records of its others are returned, for ``drop``, so that its rows are in OUTPUT once."""
        unknown = [r for r in self._records.values() if any(p.input_id is None for p in r.pieces)]
        for record in unknown:
            pieces = tuple(
                p
                if p.input_id is not None
                else dataclasses.replace(p, input_id=_identity_of(p.input_path, input_location))
                for p in record.pieces
            )
            self._forget(record)
            self._remember(dataclasses.replace(record, pieces=pieces))
        names = self.names()
        return tuple(
            record
            for record in self._records.values()
            if any(names[p.key] != p.input_relpath for p in record.pieces)
        )

    def names(self) -> dict[str, str]:
        """For ``plan.with_output_names``: the relpath each identity's scores were committed under
        (the first, where a release up to 0.2.0 committed one file under several)."""
        names: dict[str, str] = {}
        for record in self._records.values():
            for piece in record.pieces:
                if piece.key not in names or piece.input_relpath < names[piece.key]:
                    names[piece.key] = piece.input_relpath
        return names

    def adopt_legacy_fingerprints(self, files: Iterable[InputFile]) -> int:
        """Read records of older releases with today's fingerprints where they name the same file
        version (`plan.adopt_legacy`), so that their OUTPUT resumes instead of rescoring. In
        memory only: the records on disk keep what was written. Returns the pieces adopted."""
        adopted = 0
        for f in files:
            for record in list(self._by_input.get(f.identity, {}).values()):
                pieces = tuple(
                    dataclasses.replace(p, input_fingerprint=f.fingerprint)
                    if p.key == f.identity and adopt_legacy(f, p.input_fingerprint)
                    else p
                    for p in record.pieces
                )
                if pieces != record.pieces:
                    adopted += sum(a != b for a, b in zip(pieces, record.pieces))
                    self._forget(record)
                    self._remember(dataclasses.replace(record, pieces=pieces))
        return adopted

    def supersede(self, files: Iterable[InputFile]) -> tuple[CommitRecord, ...]:
        """Forget the shards of inputs that changed (fingerprint differs), so they are rescored.

        A record any of whose files changed goes whole: the other files it packed are rescored
        with the changed one. Records are deleted before outputs: see the module docstring.
        """
        fingerprints = {f.identity: f.fingerprint for f in files}
        stale = {
            record.shard_id: record
            for identity in fingerprints
            for record in self._by_input.get(identity, {}).values()
            if record.stale(fingerprints)
        }
        self.drop(stale.values())
        return tuple(stale.values())

    def drop(self, records: Iterable[CommitRecord], *, on_storage: bool = True) -> None:
        """Forget records and delete them, then their score files (see the module docstring for
        the order); a dry run forgets them only (``on_storage=False``)."""
        records = list(records)
        for record in records:
            self._forget(record)
        if not on_storage or not records:
            return
        self.fence()
        fs = self.layout.location.filesystem
        delete_files(fs, [self.layout.path(commit_record_relpath(r.shard_id)) for r in records])
        outputs = [r.output_relpath for r in records if not self._published(r.output_relpath)]
        delete_files(fs, [self.layout.path(relpath) for relpath in outputs])

    def commit_shard(
        self,
        shard: Shard,
        *,
        run_id: str,
        rows: int,
        model_sha256: str,
        options_digest: str,
        rows_read: int | None = None,
    ) -> CommitRecord:
        """Make a written shard visible and durable; the record written last is the commit point.

        ``rows`` is what the actor wrote: a count other than the shard's is refused, so every
        committed shard has rows out = rows in. A shard of some days of a row group
        (`Piece.days`) writes the rows it selected: ``rows_read``, every row of its row groups
        read, must then be the shard's, and ``rows`` at most that.
        """
        self._check_commit(shard, rows, rows_read)
        self.fence()  # before the rename too: locally a renamed file is visible at once
        fs = self.layout.location.filesystem
        final = self.layout.final_path_for(shard)
        final_uri = self.layout.uri(shard.output_relpath)
        temp = self.layout.temp_path_for(shard, run_id)
        temp_missing = (ShardError, "the shard's temporary output is missing")
        with foreign_errors(final_uri, "cannot commit", missing=temp_missing):
            if self.layout.writes_direct:
                if fs.get_file_info(temp).type != pafs.FileType.File:
                    raise ShardError(f"{final_uri}: the shard's staged output was not written")
            else:
                replace_durably(fs, temp, final)
        record = CommitRecord(
            shard_id=shard.shard_id,
            pieces=tuple(
                CommittedPiece(
                    input_relpath=p.input_relpath,
                    input_path=p.input_path,
                    rg_start=p.rg_start,
                    rg_stop=p.rg_stop,
                    input_fingerprint=p.fingerprint,
                    rows=p.rows,
                    input_id=p.input_id,
                )
                for p in shard.pieces
            ),
            model_sha256=model_sha256,
            options_digest=options_digest,
            output_relpath=shard.output_relpath,
            rows=rows,
            run_id=run_id,
            committed_at=now_iso(),
        )
        self._write_json(commit_record_relpath(shard.shard_id), record.to_dict(), run_id)
        self._remember(record)
        if self.layout.writes_direct:
            # Committed: now visible. A crash before the copy leaves the record and the staged
            # file, which the next run's cleanup copies into place (`_roll_forward`).
            with foreign_errors(final_uri, "cannot copy into place"):
                fs.copy_file(temp, final)
        return record

    def discard_temp(self, run_id: str) -> None:
        """Delete this run's temporary files (abandoned shards; on object storage also the
        staged copies of committed ones), at the end of a run."""
        delete_dir(self.layout.location.filesystem, self.layout.path(temp_relpath(run_id)))

    def _check_commit(self, shard: Shard, rows: int, rows_read: int | None = None) -> None:
        selects = any(p.days is not None for p in shard.pieces)
        read = rows if rows_read is None else rows_read
        if read != shard.rows or (rows != read if not selects else rows > read):
            what = f"read {read:,} rows and wrote {rows:,}" if selects else f"wrote {rows:,} rows"
            raise ShardError(f"{shard.shard_id}: {what}, expected {shard.rows:,}; not committed")
        for piece in shard.pieces:
            for other in self._by_input.get(piece.input_id, {}).values():
                if other.shard_id == shard.shard_id:
                    continue
                # Either would make rows visible twice; supersede() and plan reuse rule both out.
                for theirs in other.pieces:
                    if theirs.key != piece.input_id:
                        continue
                    if theirs.input_fingerprint != piece.fingerprint:
                        raise ShardError(
                            f"{shard.shard_id}: {other.shard_id} of an older version of the input "
                            f"{piece.input_relpath} is still committed (supersede() was not called)"
                        )
                    # Pieces of other days of one row group: `days.apply_commits` planned the
                    # days no record held.
                    if theirs.overlaps(piece.rg_start, piece.rg_stop) and not _other_days(
                        piece, other.shard_id
                    ):
                        raise ShardError(
                            f"{shard.shard_id}: overlaps committed shard {other.shard_id}"
                        )

    def _roll_forward(self) -> tuple[str, ...]:
        """Object storage: copy into place the score files of committed shards that a crashed
        run had staged but not yet copied (its record is the commit point)."""
        if not self.layout.writes_direct or not self._records:
            return ()
        fs = self.layout.location.filesystem
        listed = list_files(
            fs, self.layout.path(SCORES), recursive=True, where=self.layout.uri(SCORES)
        )
        present = {i.path for i in listed if i.type == pafs.FileType.File}
        rolled = []
        for record in self._records.values():
            final = self.layout.path(record.output_relpath)
            if final in present:
                continue
            staged = self.layout.path(temp_relpath(record.run_id, record.output_relpath))
            with foreign_errors(self.layout.uri(record.output_relpath), "cannot copy into place"):
                if fs.get_file_info(staged).type != pafs.FileType.File:
                    continue  # not staged either: its file was deleted after it committed
                fs.copy_file(staged, final)
            rolled.append(record.output_relpath)
        return tuple(sorted(rolled))

    def _published(self, relpath: str) -> bool:
        """Whether a table's log may reference ``relpath``; a Delta log's own files always."""
        if relpath.startswith(f"{DELTA_LOG}/"):
            return True
        return self.published is not None and self.published.keeps(relpath)

    def _remember(self, record: CommitRecord) -> None:
        self._records[record.shard_id] = record
        for piece in record.pieces:
            self._by_input.setdefault(piece.key, {})[record.shard_id] = record

    def _forget(self, record: CommitRecord) -> None:
        del self._records[record.shard_id]
        for piece in record.pieces:
            self._by_input[piece.key].pop(record.shard_id, None)

    def _read_claim(self) -> OutputClaim | None:
        return read_json_record(
            self.layout.location.filesystem,
            self.layout.path(OUTPUT_STATE),
            OutputClaim,
            where=self.layout.uri(OUTPUT_STATE),
            error=StorageError,
            advice="--overwrite replaces it",
        )

    def _write_json(self, relpath: str, data: Mapping[str, object], run_id: str) -> None:
        """Write a small JSON file so it appears whole: temp + rename locally, one PUT elsewhere."""
        self.fence()
        fs = self.layout.location.filesystem
        payload = json.dumps(data, indent=1, sort_keys=True).encode()
        with foreign_errors(self.layout.uri(relpath), "cannot write"):
            if self.layout.writes_direct:
                with fs.open_output_stream(self.layout.path(relpath)) as out:
                    out.write(payload)
                return
            temp = self.layout.path(temp_relpath(run_id, relpath))
            fs.create_dir(temp.rpartition("/")[0], recursive=True)
            with open(temp, "wb") as out:
                out.write(payload)
            replace_durably(fs, temp, self.layout.path(relpath))


def _unfenced() -> None:
    """The fence of a manifest used without the lock (a dry run, a test): nothing to check."""


def _other_days(piece: Piece, committed_id: str) -> bool:
    """Whether ``piece`` and a committed shard are of disjoint days of one row group."""
    theirs = piece_days(committed_id)
    return piece.days is not None and theirs is not None and not (piece.days & theirs)


def _identity_of(path: str, input_location: Location) -> str:
    """The identity of the file a record of a release up to 0.2.0 names by ``path``: a local
    absolute path resolved here, else an object of INPUT's store."""
    if path.startswith("/"):
        return f"file://{os.path.realpath(path)}"
    return input_location.identity(path)
