"""Synthetic session history with a known ground-truth conversion probability (`scorer generate`).

Layout. `sessions` rows are spread evenly over `days` consecutive days ending at `end_date`, and
`files` files evenly over those days: ``OUTPUT/dt=YYYY-MM-DD/part-NNNNN.parquet`` in the session
schema (docs/input.md), with `session_id` numbering all rows of the data set in (day, file) order.

Features. A smoothed bootstrap of the bundled real sessions: each row copies a real session of the
same calendar month as its `dt` (Jan and Apr, absent from the real year, borrow Dec and Mar), so
every column keeps its joint distribution with the others, then perturbs it so that rows are not
verbatim copies: page counts, durations, rates and page values are multiplied by small random
factors (a zero stays zero, which keeps the zero-inflation; a duration follows its page count,
which keeps their correlation; bounce and exit rates share a factor, which keeps their order).
`month` and `weekend` come from `dt`, so they always agree with the partition; `special_day` is
copied, so only Feb and May have special days, as in the real year.

Labels. `converted` is drawn from the ground truth (`ground_truth_probability`): a fixed logistic
function of the features with hard-coded coefficients, fitted once by maximum likelihood to the
bundled sessions; a data set's intercept `shift` is solved so that the mean ground-truth
probability over its rows equals the requested conversion rate exactly. Calibration of any model
can then be measured against the truth, not only against the labels.

Determinism. Every block of `BLOCK_ROWS` rows of file i draws from its own PCG64 streams seeded by
``SeedSequence(seed, spawn_key=(i, block, stream))``, so blocks and files can be made in any order
on any number of threads and the output is byte-identical for the same arguments (and versions
of NumPy and pyarrow). Features do not depend on `conversion_rate` (only labels do), nor on
`row_group_rows`.

Broken days (`Break`, ``--break``). A tracking bug breaks what we see, not what users do: a
break rewrites one column on one day after that day's labels were drawn, so the labels, the
shift and every other column are exactly those of the same generation without breaks, and the
ground truth must be recomputed from that unbroken generation (on broken columns
`ground_truth_probability` describes the broken values, not what users did). Kinds: ``zero`` (a
numeric column all 0), ``shift`` (a numeric column times a factor, integers rounded; rates may leave
[0, 1], which the scorer counts as invalid), ``null`` (a share of the day's rows missing, any
feature), ``unseen`` (a share of a categorical column replaced by a value outside the bundled
model's vocabulary: 99 for integer codes, ``"unseen"`` for strings). Which rows a share picks
comes from a third stream per block, so breaks keep the output deterministic for a seed.

Two passes: the first draws each block's leading features, the ground truth's inputs, to solve
the shift (holding 8 bytes per session meanwhile); the second draws them again from the same
streams, then the other columns and the labels, and writes. The first pass costs a tenth of the
second, and memory stays bounded by a row group per thread instead of the whole data set.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from scorer.errors import ConfigError, OutputConflictError
from scorer.model.sessions import MONTHS, SESSION_SCHEMA, VISITOR_TYPES, load_bundled_sessions
from scorer.storage import Location, StorageOptions, foreign_errors, resolve

DEFAULT_CONVERSION_RATE = None
# None: no intercept shift, so every month converts at the real store's own rate for that month
# (the bundled sessions convert at 15.47% over the year, ~25% in November). That keeps generated
# data consistent with the sessions the bundled model was trained on, so the model is close to
# calibrated on it; a requested rate shifts every day alike (a funnel that converts worse).
DEFAULT_END_DATE = dt.date(2026, 11, 27)  # fixed, so a seed means the same data on any day
DEFAULT_ROW_GROUP_ROWS = 131_072
BLOCK_ROWS = 65_536  # unit of random streams; independent of the Parquet row-group size
METADATA_KEY = b"scorer.generate"

# Ground truth: logit p = INTERCEPT + shift + Σ coefficient · feature, fitted once by unpenalised
# logistic regression on the 12,330 bundled sessions (ROC AUC 0.918 there) and rounded.
# `special_day` was left out: with month in the model its fitted weight is zero.
INTERCEPT = -3.59
COEF_LOG1P_PAGE_VALUE = 1.11
COEF_EXIT_RATE = -12.63
COEF_LOG1P_PRODUCT_PAGES = 0.06
COEF_WEEKEND = 0.10
VISITOR_EFFECT = {"Returning_Visitor": 0.0, "New_Visitor": 0.63, "Other": 0.31}
# Relative to May. Jan and Apr are absent from the real year; they take the month they borrow from.
MONTH_EFFECT = {
    "Jan": 0.15, "Feb": -0.85, "Mar": 0.25, "Apr": 0.25, "May": 0.0, "Jun": 0.43,
    "Jul": 0.82, "Aug": 0.74, "Sep": 0.69, "Oct": 0.63, "Nov": 1.45, "Dec": 0.15,
}  # fmt: skip
BORROWED_MONTH = {"Jan": "Dec", "Apr": "Mar"}

# Half-widths of the multiplicative jitter, uniform on the log scale: page counts by up to ±25%,
# durations, rates and page values by up to ±20%.
JITTER_PAGES = 0.25
JITTER_SECONDS = 0.20
JITTER_RATE = 0.20
JITTER_PAGE_VALUE = 0.20

_MONTH_EFFECT = np.array([MONTH_EFFECT[m] for m in MONTHS])
_VISITOR_EFFECT = np.array([VISITOR_EFFECT[v] for v in VISITOR_TYPES])
_FEATURES, _LABELS, _BREAKS = 0, 1, 2  # stream ids within a block
_COPIED = ("special_day", "operating_system", "browser", "region", "traffic_type")
# Dictionary encoding only where values repeat: on continuous doubles it is tried and abandoned
# per row group, which made writing ~40% slower and the files no smaller.
_DICTIONARY_COLUMNS = (
    "admin_pages", "info_pages", "product_pages", "special_day", "month",
    "operating_system", "browser", "region", "traffic_type", "visitor_type",
)  # fmt: skip


# What each kind of break may touch. `month` and `weekend` can be nulled or (month) flooded but not
# zeroed: they are categories and a flag, derived from dt.
NUMERIC_COLUMNS = (
    "admin_pages", "admin_seconds", "info_pages", "info_seconds", "product_pages",
    "product_seconds", "bounce_rate", "exit_rate", "page_value", "special_day",
)  # fmt: skip
CATEGORICAL_COLUMNS = (
    "month", "operating_system", "browser", "region", "traffic_type", "visitor_type",
)  # fmt: skip
BREAK_COLUMNS = {
    "zero": NUMERIC_COLUMNS,
    "shift": NUMERIC_COLUMNS,
    "null": (*NUMERIC_COLUMNS, *CATEGORICAL_COLUMNS, "weekend"),
    "unseen": CATEGORICAL_COLUMNS,
}
# Outside the bundled model's vocabularies and the real sessions' values (integer codes reach 20).
UNSEEN_INT = 99
UNSEEN_STRING = "unseen"
MAX_SHIFT_FACTOR = 1000.0  # keeps a shifted page count far inside int32
_BREAK_SYNTAX = "DATE:KIND=COLUMN[:AMOUNT], e.g. 2026-11-20:zero=page_value"


@dataclass(frozen=True)
class Break:
    """One column broken on one generated day, as a tracking bug would break it.

    `kind` is one of `BREAK_COLUMNS`' keys and `column` one of its columns. `amount`: for
    ``shift`` the factor (required, in (0, 1000]); for ``null`` and ``unseen`` the share of the
    day's rows hit, each row independently (default 1: all of them); unused by ``zero``.
    """

    day: dt.date
    kind: str
    column: str
    amount: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.day, dt.date):
            raise ConfigError(f"break on {self.day!r}: the day must be a datetime.date")
        if self.kind not in BREAK_COLUMNS:
            raise ConfigError(
                f"break {self}: unknown kind {self.kind!r} (kinds: {', '.join(BREAK_COLUMNS)})"
            )
        columns = BREAK_COLUMNS[self.kind]
        if self.column not in columns:
            raise ConfigError(
                f"break {self}: column {self.column!r} cannot take a {self.kind} break"
                f" (columns: {', '.join(columns)})"
            )
        amount = self.amount
        if self.kind == "zero" and amount is not None:
            raise ConfigError(f"break {self}: zero takes no amount")
        if self.kind == "shift" and (amount is None or not 0 < amount <= MAX_SHIFT_FACTOR):
            raise ConfigError(f"break {self}: shift needs a factor in (0, {MAX_SHIFT_FACTOR:g}]")
        if self.kind in ("null", "unseen") and amount is not None and not 0 < amount <= 1:
            raise ConfigError(f"break {self}: the share must be in (0, 1], got {amount:g}")

    @classmethod
    def parse(cls, text: str) -> Break:
        """``DATE:KIND=COLUMN[:AMOUNT]``, e.g. ``2026-11-21:unseen=browser:0.3``."""
        day, _, rest = text.partition(":")
        kind, equals, target = rest.partition("=")
        column, _, amount = target.partition(":")
        if not (equals and kind and column):
            raise ConfigError(f"break {text!r}: expected {_BREAK_SYNTAX}")
        try:
            date = dt.date.fromisoformat(day)
        except ValueError:
            raise ConfigError(f"break {text!r}: {day!r} is not a date (YYYY-MM-DD)") from None
        try:
            value = float(amount) if amount else None
        except ValueError:
            raise ConfigError(f"break {text!r}: amount {amount!r} is not a number") from None
        if value is not None and not math.isfinite(value):
            raise ConfigError(f"break {text!r}: amount {amount!r} is not a finite number")
        return cls(date, kind.strip(), column.strip(), value)

    def __str__(self) -> str:
        amount = "" if self.amount is None else f":{self.amount:g}"
        return f"{self.day.isoformat()}:{self.kind}={self.column}{amount}"


@dataclass(frozen=True)
class GenerateSummary:
    """What `generate` wrote."""

    output: str
    rows: int
    files: int
    days: int
    first_day: dt.date
    last_day: dt.date
    positives: int
    conversion_rate: float  # requested: the mean ground-truth probability
    shift: float  # added to the ground truth's intercept; pass to `ground_truth_probability`
    seconds: float
    breaks: tuple[Break, ...] = ()

    @property
    def positive_rate(self) -> float:
        return self.positives / self.rows


@dataclass(frozen=True)
class _File:
    index: int
    path: str
    day: dt.date
    first_id: int
    rows: int

    def blocks(self) -> Iterator[tuple[int, int]]:
        """(block index, rows) of the file's random-stream blocks."""
        for block, start in enumerate(range(0, self.rows, BLOCK_ROWS)):
            yield block, min(BLOCK_ROWS, self.rows - start)


@dataclass(frozen=True)
class _Real:
    """The bundled sessions as NumPy columns, and per month the rows a generated day copies."""

    columns: dict[str, np.ndarray]
    pools: dict[int, np.ndarray]  # month index -> real row indices
    rate_max: float  # jittered rates are capped here (0.2): no real session exceeds it


def ground_truth_probability(
    columns: pa.Table | pa.RecordBatch | Mapping, *, shift: float = 0.0
) -> np.ndarray:
    """The true conversion probability of each session (float64), as `generate` draws labels.

    p = sigmoid(INTERCEPT + shift + 1.11 log1p(page_value) - 12.63 exit_rate
    + 0.06 log1p(product_pages) + 0.10 weekend + VISITOR_EFFECT[visitor_type] + MONTH_EFFECT[month]).

    `columns` needs page_value, exit_rate, product_pages, visitor_type, month and weekend (any
    Arrow integer or string width, or array-likes). `shift` is the data set's intercept shift
    (`GenerateSummary.shift`, also in each file's key-value metadata under ``scorer.jobs.generate``).
    """

    def column(name: str) -> pa.Array | pa.ChunkedArray:
        value = columns[name]
        return value if isinstance(value, pa.Array | pa.ChunkedArray) else pa.array(value)

    def index(name: str, vocabulary: tuple[str, ...]) -> np.ndarray:
        positions = pc.index_in(column(name).cast(pa.string()), value_set=pa.array(vocabulary))
        if positions.null_count:
            raise ValueError(f"{name}: values outside {vocabulary}")
        return positions.to_numpy()

    def numbers(name: str) -> np.ndarray:
        return np.asarray(column(name).to_numpy(zero_copy_only=False), dtype=np.float64)

    logit = _logit(
        page_value=numbers("page_value"),
        exit_rate=numbers("exit_rate"),
        product_pages=numbers("product_pages"),
        visitor=index("visitor_type", VISITOR_TYPES),
        month=index("month", MONTHS),
        weekend=numbers("weekend"),
    )
    return _sigmoid(logit + shift)


def generate(
    output: str | os.PathLike,
    *,
    sessions: int,
    files: int,
    days: int,
    seed: int,
    conversion_rate: float | None = DEFAULT_CONVERSION_RATE,
    end_date: dt.date = DEFAULT_END_DATE,
    row_group_rows: int = DEFAULT_ROW_GROUP_ROWS,
    int_type: pa.DataType = pa.int32(),  # noqa: B008  (Arrow types are immutable singletons)
    string_type: pa.DataType = pa.string(),  # noqa: B008
    storage: StorageOptions | None = None,
    workers: int | None = None,
    breaks: Sequence[Break] = (),
) -> GenerateSummary:
    """Write a synthetic labelled session history to `output` (a new or empty directory or URI).

    `int_type` and `string_type` replace the schema's int32 and string columns (session_id stays
    int64), to make the schema variants readers must accept. `storage` fills in what an s3://
    URI lacks (`scorer.storage.resolve`). `workers`: threads (default: CPUs); the output does
    not depend on it. `breaks` break columns on chosen days, applied in their order after the
    labels are drawn (see the module docstring); each day must be one of the generated days.
    """
    started = time.perf_counter()
    _check(sessions, files, days, seed, conversion_rate, row_group_rows, int_type, string_type)
    breaks = tuple(breaks)
    _check_break_days(breaks, end_date, days)
    location = _open_output(output, storage)
    plan = _plan(location.path, sessions, files, days, end_date)
    schema = _schema(int_type, string_type)
    real = _real_sessions()

    with ThreadPoolExecutor(max_workers=workers or os.cpu_count()) as pool:
        units = [(file, block, rows) for file in plan for block, rows in file.blocks()]
        logits = list(pool.map(lambda unit: _block_logit(real, seed, *unit), units))
        if conversion_rate is None:
            shift = 0.0
            conversion_rate = _mean_probability(logits, pool.map)
        else:
            shift = _solve_shift(logits, conversion_rate, pool.map)
        # Provenance in every file, so that the data set alone says how to recompute its truth.
        provenance = {
            "seed": seed,
            "sessions": sessions,
            "files": files,
            "days": days,
            "end_date": end_date.isoformat(),
            "conversion_rate": conversion_rate,
            "shift": shift,
        }
        if breaks:  # only then, so that data sets without breaks keep their bytes
            provenance["breaks"] = [str(b) for b in breaks]
        schema = schema.with_metadata({METADATA_KEY: json.dumps(provenance)})
        write = functools.partial(
            _write_file, location.filesystem, real, seed, shift, schema, row_group_rows, breaks
        )
        positives = sum(pool.map(write, plan))

    return GenerateSummary(
        output=location.uri,
        rows=sessions,
        files=files,
        days=days,
        first_day=plan[0].day,
        last_day=plan[-1].day,
        positives=positives,
        conversion_rate=conversion_rate,
        shift=shift,
        seconds=time.perf_counter() - started,
        breaks=breaks,
    )


def _check(sessions, files, days, seed, conversion_rate, row_group_rows, int_type, string_type):
    if sessions < 1:
        raise ConfigError(f"sessions must be at least 1, got {sessions}")
    if files < 1:
        raise ConfigError(f"files must be at least 1, got {files}")
    if days < 1:
        raise ConfigError(f"days must be at least 1, got {days}")
    if files < days:
        raise ConfigError(
            f"files ({files}) must be at least days ({days}): every dt partition holds a file"
        )
    if sessions < files:
        raise ConfigError(
            f"sessions ({sessions}) must be at least files ({files}): every file holds a session"
        )
    if seed < 0:
        raise ConfigError(f"seed must be non-negative, got {seed}")
    if conversion_rate is not None and not 0.0 < conversion_rate < 1.0:
        raise ConfigError(f"conversion_rate must be in (0, 1), got {conversion_rate}")
    if row_group_rows < 1:
        raise ConfigError(f"row_group_rows must be at least 1, got {row_group_rows}")
    if int_type not in (pa.int32(), pa.int64()):
        raise ConfigError(f"int_type must be int32 or int64, got {int_type}")
    if string_type not in (pa.string(), pa.large_string()):
        raise ConfigError(f"string_type must be string or large_string, got {string_type}")


def _check_break_days(breaks: tuple[Break, ...], end_date: dt.date, days: int) -> None:
    first = end_date - dt.timedelta(days=days - 1)
    for b in breaks:
        if not first <= b.day <= end_date:
            raise ConfigError(
                f"break {b}: {b.day.isoformat()} is not a generated day"
                f" ({first.isoformat()}..{end_date.isoformat()})"
            )


def _open_output(output: str | os.PathLike, storage: StorageOptions | None) -> Location:
    """Where to write, refusing a place that already holds files."""
    location = resolve(output, storage)
    fs, root = location.filesystem, location.path
    with foreign_errors(str(location), "cannot inspect OUTPUT", foreign=(pa.ArrowException,)):
        info = fs.get_file_info(root)
        is_occupied = info.type == pafs.FileType.Directory and fs.get_file_info(
            pafs.FileSelector(root)
        )
    if info.type == pafs.FileType.File:
        raise OutputConflictError(f"{location}: OUTPUT is a file, not a directory")
    if is_occupied:
        # Mixing two data sets would duplicate session ids; an existing one is never replaced.
        raise OutputConflictError(f"{location}: OUTPUT is not empty; choose a new directory")
    return location


def _plan(root: str, sessions: int, files: int, days: int, end_date: dt.date) -> list[_File]:
    """Rows spread evenly over days, files evenly over days, a day's rows evenly over its files."""
    plan: list[_File] = []
    first_id = 0
    for d in range(days):
        day = end_date - dt.timedelta(days=days - 1 - d)
        day_rows = _share(sessions, days, d)
        day_files = _share(files, days, d)
        for part in range(day_files):
            rows = _share(day_rows, day_files, part)
            path = f"{root}/dt={day.isoformat()}/part-{part:05d}.parquet"
            plan.append(_File(len(plan), path, day, first_id, rows))
            first_id += rows
    return plan


def _share(total: int, parts: int, i: int) -> int:
    """Size of part i when `total` is split into `parts` sizes differing by at most one."""
    return total // parts + (i < total % parts)


def _schema(int_type: pa.DataType, string_type: pa.DataType) -> pa.Schema:
    def variant(field: pa.Field) -> pa.Field:
        if field.name == "session_id":
            return field
        if field.type == pa.int32():
            return field.with_type(int_type)
        if field.type == pa.string():
            return field.with_type(string_type)
        return field

    return pa.schema([variant(field) for field in SESSION_SCHEMA])


@functools.cache
def _real_sessions() -> _Real:
    table = load_bundled_sessions()
    columns = {name: table[name].to_numpy() for name in table.column_names}
    columns["visitor"] = _positions(table["visitor_type"], VISITOR_TYPES)
    month = _positions(table["month"], MONTHS)
    pools = {
        m: np.flatnonzero(month == MONTHS.index(BORROWED_MONTH.get(name, name)))
        for m, name in enumerate(MONTHS)
    }
    rate_max = max(columns["bounce_rate"].max(), columns["exit_rate"].max())
    return _Real(columns, pools, rate_max)


def _positions(values: pa.ChunkedArray, vocabulary: tuple[str, ...]) -> np.ndarray:
    return pc.index_in(values, value_set=pa.array(vocabulary)).to_numpy()


def _draw_logit_features(real: _Real, rng: np.random.Generator, rows: int, day: dt.date) -> dict:
    """The first draws of a block: which real sessions it copies and the ground truth's inputs.

    The first pass needs only these, and it draws them in the same order from the same stream as
    the second pass, which goes on with `_draw_other_features`. Bounce rate is here because it
    shares exit rate's factor.
    """
    pool = real.pools[day.month - 1]
    picked = pool[rng.integers(0, len(pool), rows)]
    src = real.columns
    jitter = _jitter(rng, (JITTER_PAGES, JITTER_RATE, JITTER_PAGE_VALUE), rows)
    return {
        "picked": picked,
        "product_pages": _scale_pages(src["product_pages"][picked], jitter[0]),
        "exit_rate": np.minimum(src["exit_rate"][picked] * jitter[1], real.rate_max),
        "bounce_rate": np.minimum(src["bounce_rate"][picked] * jitter[1], real.rate_max),
        "page_value": src["page_value"][picked] * jitter[2],
        "visitor": src["visitor"][picked],
        "month": np.full(rows, day.month - 1),
        "weekend": np.full(rows, day.weekday() >= 5),
    }


def _draw_other_features(real: _Real, rng: np.random.Generator, features: dict) -> dict:
    """The rest of a block's columns, drawn after `_draw_logit_features` from the same stream."""
    src = real.columns
    picked = features["picked"]
    widths = (JITTER_PAGES, JITTER_PAGES, JITTER_SECONDS, JITTER_SECONDS, JITTER_SECONDS)
    jitter = _jitter(rng, widths, len(picked))
    pages = {
        "admin": _scale_pages(src["admin_pages"][picked], jitter[0]),
        "info": _scale_pages(src["info_pages"][picked], jitter[1]),
        "product": features["product_pages"],
    }
    out = {name: src[name][picked] for name in _COPIED}
    for kind, seconds_jitter in zip(pages, jitter[2:5], strict=True):
        # Seconds follow the page count so that pages and seconds stay correlated.
        per_page = src[f"{kind}_seconds"][picked] / np.maximum(src[f"{kind}_pages"][picked], 1)
        out[f"{kind}_pages"] = pages[kind]
        out[f"{kind}_seconds"] = per_page * pages[kind] * seconds_jitter
    return out


def _jitter(rng: np.random.Generator, half_widths: tuple[float, ...], rows: int) -> np.ndarray:
    """Multiplicative factors exp(U(-w, w)), one row per half-width w.

    Bounded, unlike lognormal factors, and float32 uniforms cost a third of float64 normals,
    which were the largest cost of a block.
    """
    jitter = rng.random((len(half_widths), rows), dtype=np.float32)
    jitter -= 0.5
    jitter *= 2 * np.array(half_widths, dtype=np.float32)[:, None]
    return np.exp(jitter, out=jitter)


def _scale_pages(pages: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """Scaled page counts, rounded; a visited kind keeps at least one page, an unvisited none."""
    return np.where(pages > 0, np.maximum(np.rint(pages * factor), 1.0), 0.0)


def _logit(*, page_value, exit_rate, product_pages, visitor, month, weekend) -> np.ndarray:
    """The ground truth's logit without the data set's shift (arrays; categoricals as indices)."""
    return (
        INTERCEPT
        + COEF_LOG1P_PAGE_VALUE * np.log1p(page_value)
        + COEF_EXIT_RATE * exit_rate
        + COEF_LOG1P_PRODUCT_PAGES * np.log1p(product_pages)
        + COEF_WEEKEND * weekend
        + _VISITOR_EFFECT[visitor]
        + _MONTH_EFFECT[month]
    )


def _features_logit(features: dict) -> np.ndarray:
    """The unshifted ground-truth logit of a block drawn by `_draw_logit_features`."""
    return _logit(
        page_value=features["page_value"],
        exit_rate=features["exit_rate"],
        product_pages=features["product_pages"],
        visitor=features["visitor"],
        month=features["month"],
        weekend=features["weekend"],
    )


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # exp(-x) = inf for x < -709 gives exactly 0, as it should
        return 1.0 / (1.0 + np.exp(-x))


def _rng(seed: int, file: _File, block: int, stream: int) -> np.random.Generator:
    sequence = np.random.SeedSequence(seed, spawn_key=(file.index, block, stream))
    return np.random.Generator(np.random.PCG64(sequence))


def _block_logit(real: _Real, seed: int, file: _File, block: int, rows: int) -> np.ndarray:
    rng = _rng(seed, file, block, _FEATURES)
    return _features_logit(_draw_logit_features(real, rng, rows, file.day))


def _solve_shift(logits: list[np.ndarray], rate: float, map_=map) -> float:
    """The s with mean(sigmoid(logit + s)) == rate over all blocks' logits.

    Newton's method kept inside a bisection bracket: the mean increases with s, so the bracket
    always holds the root, and Newton converges in a handful of passes where bisection takes ~50.
    Sums are taken per block (cache-sized, on `map_`'s threads) and added exactly in block order,
    so the result does not depend on the number of threads.
    """
    rows = sum(len(block) for block in logits)
    low, high = -60.0, 60.0  # logits of 1e-26 and 1 - 1e-26: beyond any reachable rate
    shift = 0.0
    for _ in range(100):
        sums = list(map_(functools.partial(_shifted_sums, shift=shift), logits))
        excess = math.fsum(total for total, _ in sums) / rows - rate
        slope = math.fsum(derivative for _, derivative in sums) / rows
        if abs(excess) < 1e-13:
            break
        if excess > 0:
            high = shift
        else:
            low = shift
        step = shift - excess / slope if slope > 0 else high
        shift = step if low < step < high else 0.5 * (low + high)
    return float(shift)


def _mean_probability(logits: list[np.ndarray], map_=map) -> float:
    """Mean unshifted ground-truth probability over all blocks (summed in block order)."""
    rows = sum(len(block) for block in logits)
    return math.fsum(total for total, _ in map_(_shifted_sums, logits)) / rows


def _shifted_sums(logit: np.ndarray, shift: float = 0.0) -> tuple[float, float]:
    """Sums of p and of dp/ds = p(1 - p) over one block, p = sigmoid(logit + shift)."""
    p = _sigmoid(logit + shift)
    return float(p.sum()), float((p * (1.0 - p)).sum())


def _write_file(
    fs: pafs.FileSystem,
    real: _Real,
    seed: int,
    shift: float,
    schema: pa.Schema,
    row_group_rows: int,
    breaks: tuple[Break, ...],
    file: _File,
) -> int:
    """Write one file of the plan, row group by row group; return its number of positives."""
    positives = 0
    pending: list[pa.Table] = []
    pending_rows = 0
    with foreign_errors(file.path, "cannot write the file"):
        fs.create_dir(file.path.rsplit("/", 1)[0], recursive=True)
        with pq.ParquetWriter(
            file.path,
            schema,
            filesystem=fs,
            compression="zstd",
            use_dictionary=list(_DICTIONARY_COLUMNS),
        ) as writer:
            day_breaks = [b for b in breaks if b.day == file.day]
            for table in _file_blocks(real, seed, shift, schema, file, day_breaks):
                positives += pc.sum(table["converted"]).as_py()
                pending.append(table)
                pending_rows += table.num_rows
                # Blocks and row groups differ in size: flush whole row groups as they fill up.
                if pending_rows >= row_group_rows:
                    buffered = pa.concat_tables(pending)
                    whole = pending_rows - pending_rows % row_group_rows
                    writer.write_table(buffered.slice(0, whole), row_group_size=row_group_rows)
                    pending, pending_rows = [buffered.slice(whole)], pending_rows - whole
            if pending_rows:
                writer.write_table(pa.concat_tables(pending), row_group_size=row_group_rows)
    return positives


def _file_blocks(
    real: _Real, seed: int, shift: float, schema: pa.Schema, file: _File, breaks: list[Break]
) -> Iterator[pa.Table]:
    """The file's sessions, one table per block of its random streams, broken by `breaks`."""
    first_id = file.first_id
    for block, rows in file.blocks():
        rng = _rng(seed, file, block, _FEATURES)
        features = _draw_logit_features(real, rng, rows, file.day)
        p = _sigmoid(_features_logit(features) + shift)
        features |= _draw_other_features(real, rng, features)
        converted = _rng(seed, file, block, _LABELS).random(rows) < p
        table = _table(features, converted, first_id, schema)
        if breaks:
            table = _broken(table, breaks, _rng(seed, file, block, _BREAKS))
        yield table
        first_id += rows


def _broken(table: pa.Table, breaks: list[Break], rng: np.random.Generator) -> pa.Table:
    """`table` with each break applied in order; shares draw from `rng` in that order."""
    for b in breaks:
        i = table.schema.get_field_index(b.column)
        column, type_ = table.column(i), table.schema.field(i).type
        if b.kind == "zero":
            column = pa.repeat(pa.scalar(0, type_), table.num_rows)
        elif b.kind == "shift":
            shifted = pc.multiply(column.cast(pa.float64()), b.amount)
            column = (pc.round(shifted) if pa.types.is_integer(type_) else shifted).cast(type_)
        else:
            hit = rng.random(table.num_rows) < (1.0 if b.amount is None else b.amount)
            if b.kind == "null":
                value = pa.scalar(None, type_)
            else:
                value = pa.scalar(
                    UNSEEN_INT if pa.types.is_integer(type_) else UNSEEN_STRING, type_
                )
            column = pc.if_else(pa.array(hit), value, column)
        table = table.set_column(i, table.schema.field(i), column)
    return table


def _table(features: dict, converted: np.ndarray, first_id: int, schema: pa.Schema) -> pa.Table:
    columns = {
        **features,
        "session_id": np.arange(first_id, first_id + len(converted), dtype=np.int64),
        "converted": converted,
        # `take` on a tiny vocabulary builds the strings in Arrow's C++, not per row in Python.
        "month": pa.array(MONTHS).take(features["month"]),
        "visitor_type": pa.array(VISITOR_TYPES).take(features["visitor"]),
    }
    return pa.Table.from_arrays([_arrow(columns[f.name], f.type) for f in schema], schema=schema)


def _arrow(values: np.ndarray | pa.Array, type_: pa.DataType) -> pa.Array:
    if isinstance(values, pa.Array):
        return values.cast(type_)
    return pa.array(values.astype(type_.to_pandas_dtype(), copy=False), type=type_)
