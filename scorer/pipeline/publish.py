"""Which table a run publishes to: the one place that picks it by ``OutputFormat``.

Above both table formats (``delta``, ``iceberg``), which stand on what they share (``tables``):
so neither format, nor ``tables``, imports the other side. ``open_table`` gives the run's table
(None for plain Parquet); ``check_format`` refuses, before anything is scored, an OUTPUT a format
is not wired to and one whose ``scores/`` is already a table of another format.

The format modules are imported here, not on use: they import delta-rs and pyiceberg only where
they publish, so a Parquet run pays nothing for them.
"""

from __future__ import annotations

import pyarrow.fs as pafs

from scorer.config import JobConfig, OutputFormat
from scorer.errors import OutputConflictError
from scorer.pipeline.delta import ScoresTable, check_location
from scorer.pipeline.iceberg import IcebergScores, check_output
from scorer.pipeline.layout import TABLE_LOGS
from scorer.pipeline.tables import ScoresTableFormat
from scorer.storage import Location, foreign_errors

__all__ = ["check_format", "open_table"]

_TITLES = {OutputFormat.DELTA: "a Delta", OutputFormat.ICEBERG: "an Iceberg"}


def open_table(output: Location, config: JobConfig) -> ScoresTableFormat | None:
    """The table the run publishes to; None for plain Parquet."""
    if config.format is OutputFormat.DELTA:
        return ScoresTable(output)
    if config.format is OutputFormat.ICEBERG:
        return IcebergScores(output, config.iceberg)
    return None


def check_format(output: Location, config: JobConfig) -> None:
    """Refuse what would mix the formats in one OUTPUT, and outputs a format is not wired to.

    A Parquet run on a table would delete files its older versions reference; ``--overwrite``
    replaces the table. A table run on Parquet scores publishes the committed files it finds.
    """
    if config.format is OutputFormat.DELTA:
        check_location(output)
    elif config.format is OutputFormat.ICEBERG:
        check_output(output, config.iceberg)
    if config.overwrite:
        return
    for table_format, log in TABLE_LOGS.items():
        if table_format is config.format:
            continue
        folder = output.child(log)
        with foreign_errors(folder.uri, "cannot read"):
            is_table = output.filesystem.get_file_info(folder.path).type == pafs.FileType.Directory
        if is_table:
            raise OutputConflictError(
                f"{output.uri}: scores/ is {_TITLES[table_format]} table: pass --format "
                f'{table_format} (or format = "{table_format}"), or --overwrite to replace it '
                f"with --format {config.format}"
            )
