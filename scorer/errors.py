"""Every error the library raises on purpose, and every exit code a run ends with.

ScorerError                      root: the CLI prints "TypeName: message"
├── ConfigError                  a TOML key or option value is wrong (exit 2)
├── PreflightError               the job as a whole cannot be right (exit 2)
│   ├── NoInputFilesError        INPUT matched no Parquet file
│   ├── MissingColumnError       a model column is in no input file
│   ├── ColumnTypeConflictError  the key (or a kept column) has types readers cannot union
│   └── OutputConflictError      OUTPUT inside INPUT, or holds another model's scores
├── ModelError                   a model directory is unusable
│   ├── ChecksumError            model.onnx does not match its card's sha256
│   └── ForeignGraphError        an ONNX file `scorer import` cannot make a model of
├── TrainingDataError            labelled data unfit for training or calibration
├── LockError                    another run holds OUTPUT's lock
│   └── LockLostError            this run's lock was taken over: it stops committing (exit 1)
├── ClusterError                 Ray could not be started or joined
├── StorageError                 a filesystem URI could not be opened
├── ReportError                  OUTPUT holds no run, or not the one asked for
├── EvaluateError                late labels cannot be joined: no scores, bad or duplicate keys
├── Interrupted                  SIGINT: in-flight shards abandoned (exit 130)
│   └── Terminated               SIGTERM, the same abandon (exit 143 = 128 + 15)
└── ShardError                   one shard failed (the run goes on)
    └── ShardReadError           its input could not be read or has a wrong schema
        ├── InputChangedError    its input is not the version planned (changed or removed)
        └── InputLimitError      its input is beyond a limit of docs/limits.md

The exit codes (docs/backfills.md) are named here and nowhere else: the errors' `exit_code`,
`exit_code()` of a run that ended (`scorer score` and `scorer evaluate` alike), the CLI and the
jobs all take them from this module.
"""

from collections.abc import Sequence

EXIT_OK = 0
"""Everything was done: every shard committed or skipped, the evaluation written."""
EXIT_FAILED = 1
"""The run failed where it was asked right: some shards failed, or its lock was lost."""
EXIT_USAGE = 2
"""Usage, config, preflight, model, storage or data error: nothing was wrong with the run
itself, and nothing was written."""
EXIT_ALERT = 3
"""Alerts were raised under `fail_on_alert`, once everything else succeeded and was written."""
EXIT_INTERRUPTED = 130
"""SIGINT (Ctrl-C): in-flight shards abandoned cleanly; a rerun resumes."""
EXIT_TERMINATED = 143
"""SIGTERM (a scheduler stopping the job), 128 + 15 as schedulers read it; abandoned as on SIGINT."""


def exit_code(run_exit_code: int, alerts: Sequence[object], fail_on_alert: bool) -> int:
    """The exit code of a run that ended with ``run_exit_code`` (`EXIT_OK`, `EXIT_FAILED`) and
    raised ``alerts``: a failure wins over alerts, which exit `EXIT_ALERT` only under
    ``fail_on_alert`` once all else succeeded (docs/backfills.md)."""
    if run_exit_code == EXIT_OK and fail_on_alert and alerts:
        return EXIT_ALERT
    return run_exit_code


class ScorerError(Exception):
    """Root of every error this library raises on purpose."""

    exit_code = EXIT_FAILED


class ConfigError(ScorerError):
    """A config key or option value is invalid; the message names the key and file."""

    exit_code = EXIT_USAGE


class PreflightError(ScorerError):
    """The job as a whole cannot produce a right result; nothing was written."""

    exit_code = EXIT_USAGE


class NoInputFilesError(PreflightError):
    """INPUT matched no Parquet file."""


class MissingColumnError(PreflightError):
    """A column the model needs is absent from every input file."""


class ColumnTypeConflictError(PreflightError):
    """A column copied to the scores has types in two input files that readers cannot union."""


class OutputConflictError(PreflightError):
    """OUTPUT overlaps INPUT or holds scores of another model."""


class ModelError(ScorerError):
    """A model directory is missing, malformed or inconsistent."""

    exit_code = EXIT_USAGE


class ChecksumError(ModelError):
    """model.onnx does not match the sha256 recorded in its card."""


class ForeignGraphError(ModelError):
    """An ONNX file cannot be imported as it is, or not with the options given."""


class TrainingDataError(ScorerError):
    """Labelled data cannot be used for training or calibration."""

    exit_code = EXIT_USAGE


class LockError(ScorerError):
    """Another live run holds the OUTPUT lock."""

    exit_code = EXIT_USAGE


class LockLostError(LockError):
    """This run no longer holds the OUTPUT lock (its lease expired, another run took it over):
    it stopped committing; what it committed stays. Exit 1: the run failed, nothing was wrong
    with how it was asked for."""

    exit_code = EXIT_FAILED


class ClusterError(ScorerError):
    """Ray could not be started or joined."""

    exit_code = EXIT_USAGE


class StorageError(ScorerError):
    """A filesystem URI could not be opened or written."""

    exit_code = EXIT_USAGE


class ReportError(ScorerError):
    """OUTPUT holds no run statistics, or not the run asked for."""

    exit_code = EXIT_USAGE


class EvaluateError(ScorerError):
    """Late labels cannot be evaluated against OUTPUT: no committed scores, a key or label column
    missing or mistyped, duplicate keys; the message names the file, column or key."""

    exit_code = EXIT_USAGE


class Interrupted(ScorerError):
    """The run was interrupted; in-flight shards were abandoned cleanly, rerun to resume."""

    exit_code = EXIT_INTERRUPTED


class Terminated(Interrupted):
    """The run was stopped by SIGTERM; abandoned as on SIGINT, exit 128 + 15 as schedulers read it."""

    exit_code = EXIT_TERMINATED


class ShardError(ScorerError):
    """One shard failed; the run records it and goes on."""


class ShardReadError(ShardError):
    """A shard's input file could not be read or lacks a model column."""

    def __init__(self, message: str, input_path: str | None = None) -> None:
        super().__init__(message)
        self.input_path = input_path
        """The file that could not be read, where known: in a shard packing several files,
        the driver fails that file's piece alone (it survives pickling, as instance state)."""


class InputLimitError(ShardReadError):
    """An input file is beyond a documented limit (docs/limits.md): its footer's size, its
    number of row groups, or the decoded size of its key and kept strings; it fails alone."""


class InputChangedError(ShardReadError):
    """A shard's input file changed or was removed since the run planned it; never retried (the
    run would mix versions), the next run plans the version now there."""
