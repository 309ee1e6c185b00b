"""Typed job configuration loaded from TOML; command-line flags override the file.

A config file mirrors the `scorer score` flags::

    input = "data/sessions"          # top level: the job
    output = "scored"
    shard_rows = 1_000_000
    keep = ["visitor_type"]
    processes = 1                    # --processes: worker processes beside the driver (no Ray)
    format = "delta"                 # --format: "parquet" (default), "delta" or "iceberg"
    since = 2026-11-01               # TOML dates or "YYYY-MM-DD" strings
    date_column = "event_date"       # --date-column: the day as a column, not a dt= folder
    date_timezone = "Europe/Paris"   # --date-timezone: a timestamp column's day (default UTC)

    [partition]                      # --partition KEY=VALUE
    dt = ["2026-11-27", "2026-11-28"]  # a list: alternatives (or one value: dt = "2026-11-27")

    [model]                          # or top-level model = "models/lgbm" and threads_per_actor
    dir = "models/lgbm"              # --model
    threads = 2                      # --threads: onnxruntime threads per worker or actor

    [ray]                            # where and how wide
    address = "127.0.0.2:6379"
    actors = 16
    cpus_per_actor = 1.0
    memory_per_actor_mb = 1024

    [storage]                        # object storage defaults for s3:// URIs
    endpoint_override = "127.0.0.1:9000"
    region = "us-east-1"
    scheme = "http"

    [iceberg]                        # format = "iceberg": the catalog (docs/iceberg.md)
    catalog_uri = "postgresql+psycopg2://scorer@db:5432/catalog"  # default: SQLite in OUTPUT
    namespace = "scoring"
    table = "intent_scores"

    [monitor]                        # alert thresholds of `score` and `evaluate` (--alert-*)
    psi = 0.25                       # inf switches a kind of alert off
    ece = 0.1
    min_rows = 5_000
    fail_on_alert = true             # --fail-on-alert: exit 3 when an alert is raised

An unknown key or a value of the wrong type is a `ConfigError` naming the key and the file.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from scorer.errors import ConfigError
from scorer.partitions import check_day_range

# The defaults of the job, read by the dataclasses below and by the CLI's help texts.
DEFAULT_BATCH_ROWS = 131_072
DEFAULT_SHARD_ROWS = 1_000_000
DEFAULT_MAX_ATTEMPTS = 3  # per shard, the first included (docs/backfills.md)
DEFAULT_THREADS_PER_ACTOR = 1
DEFAULT_CPUS_PER_ACTOR = 1.0
# Object storage (measured through a latency proxy, docs/object-storage.md): row groups of a shard
# fetched ahead of the one decoded, and ranged reads an actor has in flight at most.
DEFAULT_READ_AHEAD = 2
DEFAULT_REQUESTS_IN_FLIGHT = 8


class OutputFormat(enum.StrEnum):
    """What ``OUTPUT/scores/`` is (``--format``, ``format =``): hive Parquet, a Delta Lake table,
    or an Apache Iceberg table's data. Chosen once, here: every other module compares members,
    never strings; the CLI and config files take the values."""

    PARQUET = "parquet"
    DELTA = "delta"
    ICEBERG = "iceberg"

    @property
    def is_table(self) -> bool:
        """A table format: its readers partition by folder, so a day column's scores go to one
        ``dt=`` folder per day, the table's partition (docs/nights-in-a-column.md); plain
        Parquet keeps the day a column."""
        return self is not OutputFormat.PARQUET


OUTPUT_FORMATS = tuple(f.value for f in OutputFormat)
"""The words ``--format`` and ``format =`` take."""

# Alert thresholds (`[monitor]`, docs/output.md), in one place so that they are tuned in one place.
# Starting points, to be set from measurements on clean generated days: PSI 0.25 is the usual
# "the population has shifted" line (0.1-0.25 "moderate"). A clean generated November day of the
# bundled model has an equal-width ECE of intent_calibrated of ~0.05 (8M rows; the model is close
# to calibrated on generated data, not exactly), and a 1.5% funnel ~0.25; 0.1 is between. Below
# DEFAULT_ALERT_MIN_ROWS rows a day's PSI and ECE are mostly sampling noise (ECE of 1,000 rows
# of a perfectly calibrated model is ~0.03), so such days raise no drift or calibration alert.
DEFAULT_ALERT_PSI = 0.25
DEFAULT_ALERT_SHARE_UNSEEN = 0.05
DEFAULT_ALERT_SHARE_INVALID = 0.01
DEFAULT_ALERT_SHARE_MISSING = 0.01
DEFAULT_ALERT_ECE = 0.1
DEFAULT_ALERT_MIN_ROWS = 5_000


@dataclass(frozen=True)
class RayOptions:
    """Where the job runs and how much each actor asks of the cluster."""

    address: str | None = None
    actors: int | None = None
    cpus_per_actor: float = DEFAULT_CPUS_PER_ACTOR
    memory_per_actor_mb: int | None = None


@dataclass(frozen=True)
class StorageConfig:
    """Object-storage defaults for URIs that do not carry them (credentials come from AWS_* env)."""

    endpoint_override: str | None = None
    region: str | None = None
    scheme: str | None = None
    read_ahead: int = DEFAULT_READ_AHEAD
    requests_in_flight: int = DEFAULT_REQUESTS_IN_FLIGHT

    def __post_init__(self) -> None:
        if isinstance(self.read_ahead, bool) or not isinstance(self.read_ahead, int):
            raise ConfigError(f"storage.read_ahead: must be an integer, got {self.read_ahead!r}")
        if self.read_ahead < 0:
            raise ConfigError(f"storage.read_ahead: must be at least 0, got {self.read_ahead}")
        flight = self.requests_in_flight
        if isinstance(flight, bool) or not isinstance(flight, int) or flight < 1:
            raise ConfigError(f"storage.requests_in_flight: must be at least 1, got {flight!r}")
        if isinstance(self.endpoint_override, str) and "@" in self.endpoint_override:
            # Checked here too (see `storage.StorageOptions`) so that the message names the file.
            raise ConfigError(
                "storage.endpoint_override: carries credentials (user info before '@'); set them "
                "in the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)"
            )

    def location_options(self) -> dict[str, str | None]:
        """The keys that `storage.StorageOptions` puts in an ``s3://`` URI."""
        return {
            "endpoint_override": self.endpoint_override,
            "region": self.region,
            "scheme": self.scheme,
        }


@dataclass(frozen=True)
class IcebergConfig:
    """The catalog of ``format = "iceberg"`` (docs/iceberg.md).

    ``catalog_uri``: a SQL catalog's SQLAlchemy URL (``sqlite:///…``, ``postgresql+psycopg2://…``)
    or a REST catalog's ``http(s)://`` URL; unset on a local OUTPUT, a SQLite catalog inside
    OUTPUT (``_scorer/iceberg/``). ``catalog_name``: the catalog's name (a SQL catalog keeps its
    tables under it). ``properties``: more pyiceberg catalog properties (``warehouse``,
    ``s3.endpoint``, a REST ``credential``, ...), passed as they are.
    """

    catalog_uri: str | None = None
    catalog_name: str = "intent_scorer"
    namespace: str = "scorer"
    table: str = "scores"
    properties: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("catalog_name", "namespace", "table"):
            if not getattr(self, name):
                raise ConfigError(f"iceberg.{name}: must not be empty")
        if "uri" in self.properties:
            raise ConfigError("iceberg.properties: give the catalog's uri as iceberg.catalog_uri")


MonitorMetric = Literal["psi", "share_unseen", "share_invalid", "share_missing", "ece"]
"""A figure `[monitor]` holds a threshold for, named as its key there."""
_NOISY_ON_FEW_ROWS = frozenset({"psi", "ece"})  # why: DEFAULT_ALERT_MIN_ROWS, above


@dataclass(frozen=True)
class MonitorConfig:
    """Alert thresholds: a figure of a day above its threshold is an alert (`breaches`, the one
    rule of the alerts of `scorer.pipeline.alerts` and of the figures `scorer report` marks).

    ``psi``: drift of a model input or of intent_calibrated against the card's reference;
    ``share_unseen`` / ``share_invalid`` / ``share_missing``: shares of a column's rows outside
    the vocabulary, invalid, or missing; ``ece``: equal-width ECE of intent_calibrated against
    labels; ``min_rows``: rows (labelled rows for ECE) a day needs for PSI and ECE alerts.
    ``fail_on_alert``: exit 3 when any alert is raised.
    """

    psi: float = DEFAULT_ALERT_PSI
    share_unseen: float = DEFAULT_ALERT_SHARE_UNSEEN
    share_invalid: float = DEFAULT_ALERT_SHARE_INVALID
    share_missing: float = DEFAULT_ALERT_SHARE_MISSING
    ece: float = DEFAULT_ALERT_ECE
    min_rows: int = DEFAULT_ALERT_MIN_ROWS
    fail_on_alert: bool = False

    def __post_init__(self) -> None:
        for name in get_args(MonitorMetric):
            value = getattr(self, name)
            if not value >= 0:  # NaN too
                raise ConfigError(
                    f"monitor.{name}: must be a number >= 0 (inf: never), got {value}"
                )
        if self.min_rows < 0:
            raise ConfigError(f"monitor.min_rows: must be at least 0, got {self.min_rows}")

    def breaches(self, metric: MonitorMetric, value: float | None, rows: int | None) -> bool:
        """Whether ``value`` of ``metric`` over a day of ``rows`` rows (labelled rows for ECE) is
        an alert: above its threshold, not at it; PSI and ECE only on a day of at least
        ``min_rows`` rows, shares at any size (every row of a small day invalid is still a broken
        export). A figure that was not computed (None, NaN) breaches nothing.

        The one rule of `scorer score`'s and `scorer evaluate`'s alerts and of the figures
        `scorer report` marks, so that a marked figure is one that raised an alert.
        """
        if value is None or math.isnan(value):
            return False
        if metric in _NOISY_ON_FEW_ROWS and (rows or 0) < self.min_rows:
            return False
        return value > self.threshold(metric)

    def threshold(self, metric: MonitorMetric) -> float:
        """The threshold of ``metric``, its `[monitor]` key."""
        threshold: float = getattr(self, metric)
        return threshold


@dataclass(frozen=True)
class JobConfig:
    """Everything `scorer score` needs; built from defaults, then a TOML file, then flags."""

    input: str | None = None
    output: str | None = None
    model: str | None = None
    batch_rows: int = DEFAULT_BATCH_ROWS
    shard_rows: int = DEFAULT_SHARD_ROWS
    partition: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Values per hive key: values of one key are alternatives, keys must all match. A bare
    string is taken as the one value of its key."""
    since: dt.date | None = None
    until: dt.date | None = None
    date_column: str | None = None
    """The column holding each row's day in files outside ``dt=`` folders; None: ``dt`` where
    the files have one (docs/nights-in-a-column.md)."""
    date_timezone: str | None = None
    """The timezone a timestamp day column's day is taken in; None: UTC."""
    overwrite: bool = False
    format: OutputFormat = OutputFormat.PARQUET
    """A string of ``OUTPUT_FORMATS`` is taken as its member."""
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    max_failed_shards: int | None = None
    keep: tuple[str, ...] = ()
    key_column: str | None = None
    label_column: str | None = None
    threads_per_actor: int = DEFAULT_THREADS_PER_ACTOR
    processes: int | None = None
    """Worker processes beside the in-process worker when no Ray is used (`pipeline.processes`);
    None: one per spare core where the job is big enough, 0: none."""
    ray: RayOptions = field(default_factory=RayOptions)
    storage: StorageConfig = field(default_factory=StorageConfig)
    iceberg: IcebergConfig = field(default_factory=IcebergConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)

    def __post_init__(self) -> None:
        # Frozen: the normalised mapping is set once, here (a str is one value, not its letters).
        partition = {
            key: (values,) if isinstance(values, str) else tuple(values)
            for key, values in self.partition.items()
        }
        object.__setattr__(self, "partition", partition)
        _check_positive(self, "batch_rows", "shard_rows", "max_attempts", "threads_per_actor")
        if self.max_failed_shards is not None and self.max_failed_shards < 1:
            raise ConfigError("max_failed_shards: must be at least 1")
        if self.processes is not None and (
            isinstance(self.processes, bool) or not isinstance(self.processes, int)
        ):
            raise ConfigError(f"processes: must be an integer, got {self.processes!r}")
        if self.processes is not None and self.processes < 0:
            raise ConfigError(f"processes: must be at least 0, got {self.processes}")
        if self.processes and (self.ray.address or self.ray.actors is not None):
            raise ConfigError(
                "processes: worker processes are for runs without Ray; with ray.address or "
                "ray.actors the actors score (leave processes unset)"
            )
        if self.ray.actors is not None and self.ray.actors < 1:
            raise ConfigError("ray.actors: must be at least 1")
        if self.ray.cpus_per_actor <= 0:
            raise ConfigError("ray.cpus_per_actor: must be positive")
        if self.format not in OUTPUT_FORMATS:
            raise ConfigError(
                f"format: must be one of {', '.join(OUTPUT_FORMATS)}, got {self.format!r}"
            )
        object.__setattr__(self, "format", OutputFormat(self.format))
        check_day_range(self.since, self.until, flags=False)

    def with_overrides(self, **overrides: Any) -> JobConfig:
        """A copy with the given non-None values; `ray__actors=4` reaches into a section."""
        top: dict[str, Any] = {}
        sections: dict[str, dict[str, Any]] = {}
        for key, value in overrides.items():
            if value is None or value == () or value == {}:
                continue
            if "__" in key:
                section, name = key.split("__", 1)
                sections.setdefault(section, {})[name] = value
            else:
                top[key] = value
        for section, values in sections.items():
            top[section] = dataclasses.replace(getattr(self, section), **values)
        return dataclasses.replace(self, **top)


def _check_positive(config: JobConfig, *names: str) -> None:
    for name in names:
        if getattr(config, name) < 1:
            raise ConfigError(f"{name}: must be at least 1, got {getattr(config, name)}")


def load_config(path: str | Path | None) -> JobConfig:
    """Read a TOML job config; `None` gives the defaults."""
    if path is None:
        return JobConfig()
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        return _build(JobConfig, _model_table(raw), prefix="")
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _model_table(raw: dict[str, Any]) -> dict[str, Any]:
    """`[model]` with `dir` and `threads`: the table form of `model` and `threads_per_actor`,
    so the settings of a heavy imported model sit together (docs/your-own-model.md)."""
    model = raw.get("model")
    if not isinstance(model, dict):
        return raw
    unknown = sorted(set(model) - {"dir", "threads"})
    if unknown:
        raise ConfigError(f"unknown key 'model.{unknown[0]}' (known: dir, threads)")
    threads = model.get("threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)):
        raise ConfigError(f"'model.threads' must be an integer, got {threads!r}")
    if threads is not None and "threads_per_actor" in raw:
        raise ConfigError("'model.threads' and 'threads_per_actor' are the same setting: keep one")
    table = {key: value for key, value in raw.items() if key != "model"}
    if "dir" in model:
        table["model"] = model["dir"]
    if threads is not None:
        table["threads_per_actor"] = threads
    return table


def _build(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = f"{prefix}{key}"
        if key not in known:
            raise ConfigError(f"unknown key '{name}' (known: {', '.join(sorted(known))})")
        values[key] = _coerce(hints[key], value, name)
    return cls(**values)


def _coerce(hint: Any, value: Any, name: str) -> Any:
    """Check a TOML value against a field's type hint, converting where TOML has no exact type."""
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"'{name}' must be a table [{name}]")
        return _build(hint, value, prefix=f"{name}.")
    args = [a for a in get_args(hint) if a is not type(None)]
    if get_origin(hint) is not None and type(None) in get_args(hint):
        hint = args[0]  # Optional[X]: TOML has no null, so a present value must be an X
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"'{name}' must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"'{name}' must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"'{name}' must be a number, got {value!r}")
        return float(value)
    if hint is str or (isinstance(hint, type) and issubclass(hint, enum.StrEnum)):
        if not isinstance(value, str):
            raise ConfigError(f"'{name}' must be a string, got {value!r}")
        return value
    if hint is dt.date:
        return parse_date(value, name)
    if get_origin(hint) is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"'{name}' must be a list of strings, got {value!r}")
        return tuple(value)
    if get_origin(hint) is dict:  # [partition]: a value or a list of alternatives per key
        if not isinstance(value, dict) or not all(map(_is_partition_value, value.values())):
            raise ConfigError(
                f"'{name}' must be a table of strings or lists of strings, got {value!r}"
            )
        return {
            k: tuple(str(x) for x in v) if isinstance(v, list) else (str(v),)
            for k, v in value.items()
        }
    raise ConfigError(f"'{name}': unsupported type {hint!r}")  # a bug in JobConfig, not user input


def _is_partition_value(value: Any) -> bool:
    def scalar(v: Any) -> bool:
        return isinstance(v, (str, int)) and not isinstance(v, bool)

    return scalar(value) or (isinstance(value, list) and bool(value) and all(map(scalar, value)))


def parse_date(value: Any, name: str) -> dt.date:
    """A TOML date or an ISO `YYYY-MM-DD` string."""
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            pass
    raise ConfigError(f"'{name}' must be a date YYYY-MM-DD, got {value!r}")
