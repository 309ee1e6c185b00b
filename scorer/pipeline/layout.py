"""Where everything lives under OUTPUT, and the storage operations the commit protocol is made of.

Layout under OUTPUT (SPEC §5); every path under OUTPUT is spelled here and nowhere else::

    scores/<folder>/<stem>-rg<start>-<stop>.parquet   shard outputs
    _scorer/commits/<sha1 of shard id>.json           one commit record per committed shard
    _scorer/tmp/<run_id>/                             temporary files of one run
    _scorer/output.json                               the model (and output options) OUTPUT holds
    _scorer/lock.json                                 the run that holds OUTPUT
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.fs as pafs

from scorer.errors import ShardError, StorageError
from scorer.pipeline.plan import Shard
from scorer.storage import Location

SCORES = "scores"
INTERNAL = "_scorer"
COMMITS = f"{INTERNAL}/commits"
TMP = f"{INTERNAL}/tmp"
LOCK = f"{INTERNAL}/lock.json"
OUTPUT_STATE = f"{INTERNAL}/output.json"


@dataclass(frozen=True)
class OutputLayout:
    """Where a shard's files go under OUTPUT; picklable, so actors get one."""

    location: Location

    @property
    def writes_direct(self) -> bool:
        """True where rename is not atomic (object storage): actors write the final key once."""
        return not self.location.is_local

    def final_path_for(self, shard: Shard) -> str:
        return self.location.child(shard.output_relpath).path

    def temp_path_for(self, shard: Shard, run_id: str) -> str:
        return self.location.child(f"{TMP}/{run_id}/{shard.output_relpath}").path

    def path(self, relpath: str) -> str:
        return self.location.child(relpath).path

    def uri(self, relpath: str) -> str:
        return self.location.child(relpath).uri

    @contextmanager
    def open_shard_sink(self, shard: Shard, run_id: str) -> Iterator[pa.NativeFile]:
        """The stream an actor writes a shard's Parquet file to; whole or nothing on every fs.

        Locally a temporary file (``commit_shard`` renames it); on object storage an in-memory
        buffer uploaded to the final key in one request when the block ends without error.
        """
        fs = self.location.filesystem
        if self.writes_direct:
            buffer = pa.BufferOutputStream()
            yield buffer
            data = buffer.getvalue()
            try:
                with fs.open_output_stream(self.final_path_for(shard)) as out:
                    out.write(data)
            except OSError as exc:
                raise ShardError(f"{self.uri(shard.output_relpath)}: cannot write: {exc}") from exc
            return
        path = self.temp_path_for(shard, run_id)
        try:
            fs.create_dir(path.rpartition("/")[0], recursive=True)
            sink = fs.open_output_stream(path)
        except OSError as exc:
            raise ShardError(f"{path}: cannot write: {exc}") from exc
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


def read_json(fs: pafs.FileSystem, path: str) -> dict:
    with fs.open_input_stream(path) as f:
        data = json.loads(f.read())
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def list_files(
    fs: pafs.FileSystem, path: str, *, recursive: bool, where: str
) -> list[pafs.FileInfo]:
    try:
        return fs.get_file_info(pafs.FileSelector(path, recursive=recursive, allow_not_found=True))
    except OSError as exc:
        raise StorageError(f"{where}: cannot list: {exc}") from exc


def delete_files(fs: pafs.FileSystem, paths: list[str]) -> None:
    for path in paths:
        try:
            fs.delete_file(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StorageError(f"{path}: cannot delete: {exc}") from exc


def delete_dir(fs: pafs.FileSystem, path: str) -> None:
    try:
        fs.delete_dir(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise StorageError(f"{path}: cannot delete: {exc}") from exc


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
