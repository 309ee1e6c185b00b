"""pyiceberg's FileIO for a local OUTPUT, with Python's own files (``iceberg``'s catalog property
``py-io-impl``). pyiceberg's default for ``file://``, pyarrow's, imports pyarrow.dataset and pandas:
~1 s of a run's wall on two busy cores, to write a handful of small metadata files. Imported by
pyiceberg only, when it opens a local OUTPUT's table.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import unquote, urlsplit

from pyiceberg.io import FileIO, InputFile, OutputFile


class LocalFileIO(FileIO):
    """``file://`` URIs (and plain paths) on the local filesystem."""

    def new_input(self, location: str) -> InputFile:
        return _LocalInputFile(location)

    def new_output(self, location: str) -> OutputFile:
        return _LocalOutputFile(location)

    def delete(self, location: str | InputFile | OutputFile) -> None:
        os.remove(_path(location if isinstance(location, str) else location.location))


class _LocalInputFile(InputFile):
    def __len__(self) -> int:
        return os.path.getsize(_path(self.location))

    def exists(self) -> bool:
        return os.path.exists(_path(self.location))

    def open(self, seekable: bool = True) -> Any:
        return open(_path(self.location), "rb")  # FileNotFoundError as pyiceberg expects


class _LocalOutputFile(OutputFile):
    def __len__(self) -> int:
        return os.path.getsize(_path(self.location))

    def exists(self) -> bool:
        return os.path.exists(_path(self.location))

    def to_input_file(self) -> InputFile:
        return _LocalInputFile(self.location)

    def create(self, overwrite: bool = False) -> Any:
        path = _path(self.location)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # The caller closes it (pyiceberg writes through it in a with block); "xb": a name
        # already there is a FileExistsError, as pyiceberg expects without overwrite.
        return open(path, "wb" if overwrite else "xb")


def _path(location: str) -> str:
    parts = urlsplit(location)
    return unquote(parts.path) if parts.scheme == "file" else location
