"""What a data engineer would write instead of the scorer: the same model in Polars and in DuckDB.

Each peer is a stand-alone Python script generated from a model card, with every weight inlined
as a literal (the "30-line notebook" a user writes after reading `model.json`): log1p and
standardise the numeric inputs, add the boolean and categorical weights (an unseen category
weighs 0), the logistic sigmoid for `intent_raw`, then the calibrator for `intent_calibrated`
(isotonic: linear interpolation between the knots on the logit, clipped at both ends; platt:
a sigmoid of a·z + b; none). Both read every `*.parquet` below INPUT with hive partitions and
write zstd Parquet of the key and both scores to OUTPUT, partitioned by `dt` when INPUT has it.

What they leave out, as such scripts do: input validation (an invalid row gets a score, not a
null and a status), exactly-once commits, resume, statistics and calibration metrics. `scorer
bench --whole-job` runs them as processes beside `scorer score`, and `agreement` checks that
they compute the same scores.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scorer.errors import ConfigError

PEERS = ("polars", "duckdb")
PEER_METHODS = ("isotonic", "platt", "none")


def peer_script(peer: str, card: dict[str, Any]) -> str:
    """The Python source of `peer` ("polars" or "duckdb") for the card (`model.json`, parsed)."""
    method = card["calibration"]["method"]
    if method not in PEER_METHODS:
        raise ConfigError(
            f"model {card['name']}: the {peer} peer implements calibration "
            f"{', '.join(PEER_METHODS)}, not {method}"
        )
    if peer == "polars":
        return _polars_script(card)
    if peer == "duckdb":
        return _duckdb_script(card)
    raise ConfigError(f"unknown peer {peer!r}: expected one of {', '.join(PEERS)}")


def write_peer_scripts(card_path: str | Path, out_dir: str | Path) -> dict[str, Path]:
    """Write each peer's script for the card at `card_path` into `out_dir`; returns their paths."""
    card = json.loads(Path(card_path).read_text())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for peer in PEERS:
        paths[peer] = out / f"score_{peer}.py"
        paths[peer].write_text(peer_script(peer, card))
    return paths


def agreement(ours: str | Path, theirs: str | Path, key_column: str) -> dict[str, float | int]:
    """Rows matched on the key and the largest |Δ| of each score between two OUTPUT folders.

    `ours` is a scorer OUTPUT (its `scores/` folder is read), `theirs` a peer's output folder.
    """
    import duckdb

    ours_glob = f"{Path(ours) / 'scores'}/**/*.parquet"
    theirs_glob = f"{Path(theirs)}/**/*.parquet"
    row = (
        duckdb.connect()
        .execute(
            f"""
        SELECT count(*) AS matched,
               (SELECT count(*) FROM read_parquet('{ours_glob}')) AS ours,
               (SELECT count(*) FROM read_parquet('{theirs_glob}')) AS theirs,
               max(abs(a.intent_raw - b.intent_raw)) AS max_abs_diff_raw,
               max(abs(a.intent_calibrated - b.intent_calibrated)) AS max_abs_diff_calibrated
        FROM read_parquet('{ours_glob}') a
        JOIN read_parquet('{theirs_glob}') b USING ("{key_column}")
        """
        )
        .fetchone()
    )
    assert row is not None  # an aggregate always returns one row
    names = ("matched", "ours", "theirs", "max_abs_diff_raw", "max_abs_diff_calibrated")
    return dict(zip(names, row))


# -- the model as literals ----------------------------------------------------------------------


def _terms(card: dict[str, Any]) -> dict[str, Any]:
    """The card's linear model, input by input, as the scripts spell it."""
    linear = card["linear"]
    numeric = [i for i in card["inputs"] if i["kind"] == "numeric"]
    boolean = [i for i in card["inputs"] if i["kind"] == "boolean"]
    categorical = [i for i in card["inputs"] if i["kind"] == "categorical"]
    return {
        "intercept": linear["intercept"],
        "numeric": [
            (spec["name"], mean, scale, coef)
            for spec, mean, scale, coef in zip(
                numeric, linear["numeric_mean"], linear["numeric_scale"], linear["numeric_coef"]
            )
        ],
        "boolean": [(spec["name"], coef) for spec, coef in zip(boolean, linear["boolean_coef"])],
        # The last weight of each categorical is the unseen value's (0.0).
        "categorical": [
            (spec["name"], list(spec["vocabulary"]), list(coefs[:-1]))
            for spec, coefs in zip(categorical, linear["categorical_coef"])
        ],
    }


def _segments(x: Sequence[float], y: Sequence[float]) -> list[tuple[float, float, float]]:
    """Isotonic knots as (x start, y start, slope) per segment; zero-width segments dropped."""
    return [
        (x[i], y[i], (y[i + 1] - y[i]) / (x[i + 1] - x[i]))
        for i in range(len(x) - 1)
        if x[i + 1] > x[i]
    ]


def _provenance(card: dict[str, Any]) -> str:
    return (
        f"# {card['name']} {card['version']} (sha256 {card['sha256'][:12]}), "
        "every weight inlined from its model.json.\n"
    )


# -- Polars -------------------------------------------------------------------------------------


def _polars_script(card: dict[str, Any]) -> str:
    terms = _terms(card)
    calibration = card["calibration"]["params"]
    key = card["key_column"]
    if calibration["method"] == "isotonic":
        calibrated = (
            f"pl.col('z').clip({calibration['x'][0]!r}, {calibration['x'][-1]!r})"
            f".map_batches(lambda s: pl.Series(np.interp(s.to_numpy(), X, Y)), "
            "return_dtype=pl.Float64, is_elementwise=True)"
        )
    elif calibration["method"] == "platt":
        calibrated = (
            f"1.0 / (1.0 + (pl.col('z') * {calibration['a']!r} + {calibration['b']!r}).exp())"
        )
    else:
        calibrated = "1.0 / (1.0 + (-pl.col('z')).exp())"
    return f'''"""Score INPUT into OUTPUT with Polars: python score_polars.py INPUT OUTPUT"""
{_provenance(card)}
import sys

import numpy as np
import polars as pl

INPUT, OUTPUT = sys.argv[1], sys.argv[2]
NUMERIC = {terms["numeric"]!r}  # (column, mean of log1p, scale, weight)
BOOLEAN = {terms["boolean"]!r}
CATEGORICAL = {terms["categorical"]!r}  # (column, vocabulary, weights); unseen weighs 0
X = {calibration.get("x", [])!r}
Y = {calibration.get("y", [])!r}

z = pl.lit({terms["intercept"]!r})
for name, mean, scale, weight in NUMERIC:
    z = z + weight * ((pl.col(name).cast(pl.Float64).log1p() - mean) / scale)
for name, weight in BOOLEAN:
    z = z + weight * pl.col(name).cast(pl.Float64)
for name, vocabulary, weights in CATEGORICAL:
    z = z + pl.col(name).replace_strict(vocabulary, weights, default=0.0, return_dtype=pl.Float64)

source = INPUT if INPUT.endswith(".parquet") else INPUT.rstrip("/") + "/**/*.parquet"
sessions = pl.scan_parquet(source, hive_partitioning=True)
partitioned = "dt" in sessions.collect_schema().names()
scored = sessions.select(
    pl.col({key!r}), *([pl.col("dt")] if partitioned else []), z.alias("z")
).select(
    pl.col({key!r}),
    (1.0 / (1.0 + (-pl.col("z")).exp())).cast(pl.Float32).alias("intent_raw"),
    ({calibrated}).cast(pl.Float32).alias("intent_calibrated"),
    *([pl.col("dt")] if partitioned else []),
)
if partitioned:
    scored.sink_parquet(pl.PartitionBy(OUTPUT, key="dt"), compression="zstd", mkdir=True)
else:
    scored.sink_parquet(OUTPUT.rstrip("/") + "/part-0.parquet", compression="zstd", mkdir=True)
'''


# -- DuckDB -------------------------------------------------------------------------------------


def _sql_literal(value: object) -> str:
    return "'" + value.replace("'", "''") + "'" if isinstance(value, str) else repr(value)


def _isotonic_sql(x: Sequence[float], y: Sequence[float]) -> str:
    """Interpolation between the knots as a balanced tree of CASEs: ~log2(knots) comparisons
    per row (DuckDB evaluates only the branch a row takes)."""
    segments = _segments(x, y)

    def tree(first: int, stop: int) -> str:
        if stop - first == 1:
            start, level, slope = segments[first]
            return f"({level!r} + (zc - {start!r}) * {slope!r})"
        middle = (first + stop) // 2
        return (
            f"CASE WHEN zc < {segments[middle][0]!r} THEN {tree(first, middle)} "
            f"ELSE {tree(middle, stop)} END"
        )

    return tree(0, len(segments)) if segments else repr(y[0])


def _duckdb_script(card: dict[str, Any]) -> str:
    terms = _terms(card)
    calibration = card["calibration"]["params"]
    key = card["key_column"]
    parts = [repr(terms["intercept"])]
    parts += [
        f"{weight!r} * ((ln(1 + CAST({name} AS DOUBLE)) - {mean!r}) / {scale!r})"
        for name, mean, scale, weight in terms["numeric"]
    ]
    parts += [f"{weight!r} * CAST({name} AS DOUBLE)" for name, weight in terms["boolean"]]
    for name, vocabulary, weights in terms["categorical"]:
        cases = " ".join(f"WHEN {_sql_literal(v)} THEN {w!r}" for v, w in zip(vocabulary, weights))
        parts.append(f"(CASE {name} {cases} ELSE 0.0 END)")
    logit = "\n          + ".join(parts)
    if calibration["method"] == "isotonic":
        x, y = calibration["x"], calibration["y"]
        low, high = x[0], x[-1]
        calibrated = _isotonic_sql(x, y).replace("zc", f"least(greatest(z, {low!r}), {high!r})")
    elif calibration["method"] == "platt":
        calibrated = f"1.0 / (1.0 + exp(z * {calibration['a']!r} + {calibration['b']!r}))"
    else:
        calibrated = "1.0 / (1.0 + exp(-z))"
    return f'''"""Score INPUT into OUTPUT with DuckDB: python score_duckdb.py INPUT OUTPUT"""
{_provenance(card)}
import os
import sys

import duckdb

INPUT, OUTPUT = sys.argv[1], sys.argv[2]
source = INPUT if INPUT.endswith(".parquet") else INPUT.rstrip("/") + "/**/*.parquet"
db = duckdb.connect()
names = [row[0] for row in db.execute(
    "DESCRIBE SELECT * FROM read_parquet(?, hive_partitioning = true)", [source]
).fetchall()]
partitioned = "dt" in names
scored = f"""
    SELECT {key}, CAST(1.0 / (1.0 + exp(-z)) AS FLOAT) AS intent_raw,
           CAST({calibrated} AS FLOAT) AS intent_calibrated{{", dt" if partitioned else ""}}
    FROM (
        SELECT {key}{{", dt" if partitioned else ""}},
          {logit} AS z
        FROM read_parquet('{{source}}', hive_partitioning = true)
    )
"""
if partitioned:
    db.execute(f"COPY ({{scored}}) TO '{{OUTPUT}}' (FORMAT parquet, COMPRESSION zstd, PARTITION_BY (dt))")
else:
    os.makedirs(OUTPUT, exist_ok=True)
    db.execute(f"COPY ({{scored}}) TO '{{OUTPUT}}/part-0.parquet' (FORMAT parquet, COMPRESSION zstd)")
'''
