"""Foreign errors become ours in one place, `scorer.storage.foreign_errors` (spelled by
`translated`): a filesystem's OSError always, a library's own classes where the caller names
them, the ones the caller handles itself passed through."""

from __future__ import annotations

import pytest

from scorer.errors import ConfigError, ShardError, StorageError
from scorer.storage import foreign_errors, translated


class _LibraryError(Exception):
    """A table or client library's own exception class."""


def test_an_os_error_names_where_and_what_was_done():
    with pytest.raises(StorageError, match=r"^s3://b/k: cannot read: denied$") as caught:
        with foreign_errors("s3://b/k", "cannot read"):
            raise PermissionError("denied")
    assert isinstance(caught.value.__cause__, PermissionError)


def test_a_library_error_is_translated_only_where_named():
    with pytest.raises(StorageError, match="cannot commit: busy; rerun to publish"):
        with foreign_errors(
            "t", "cannot commit", foreign=(_LibraryError,), advice="rerun to publish"
        ):
            raise _LibraryError("busy")
    with pytest.raises(_LibraryError):
        with foreign_errors("t", "cannot commit"):
            raise _LibraryError("busy")


def test_what_the_caller_handles_and_errors_of_ours_pass_unchanged():
    with pytest.raises(FileExistsError):
        with foreign_errors("lock", "cannot write", passes=(FileExistsError,)):
            raise FileExistsError("there")
    with pytest.raises(ShardError, match="^ours$"):
        with foreign_errors("t", "cannot read", foreign=(Exception,)):
            raise ShardError("ours")


def test_a_missing_file_is_ignored_or_worded_as_asked():
    with foreign_errors("f", "cannot delete", missing_ok=True):
        raise FileNotFoundError("gone")
    with pytest.raises(ShardError, match="^f: is missing: gone$"):
        with foreign_errors("f", "cannot read", missing=(ShardError, "is missing")):
            raise FileNotFoundError("gone")


def test_first_line_keeps_a_long_foreign_message_short():
    error = translated(
        RuntimeError("no such host\n[SQL: SELECT 1]\n(Background: https://…)"),
        "scores in sqlite:///c.db",
        "cannot open the catalog",
        first_line=True,
    )
    assert str(error) == "scores in sqlite:///c.db: cannot open the catalog: no such host"
    assert str(translated(RuntimeError(), "w", "d", first_line=True)) == "w: d: RuntimeError"
    assert isinstance(translated(OSError("x"), "w", "d", error=ConfigError), ConfigError)
