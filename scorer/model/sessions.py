"""The session schema (docs/input.md) and the bundled real sessions.

The bundled copy is the UCI "Online Shoppers Purchasing Intention" data set converted once to the
session schema; see ``scorer/data/README.md`` for its attribution and licence.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pyarrow as pa

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
VISITOR_TYPES = ("Returning_Visitor", "New_Visitor", "Other")

# The session's measurements (counts, seconds, rates, page value), in schema order, and the
# integer codes whose meaning the data set does not publish: a foreign model's usual features.
MEASURES = (
    "admin_pages",
    "admin_seconds",
    "info_pages",
    "info_seconds",
    "product_pages",
    "product_seconds",
    "bounce_rate",
    "exit_rate",
    "page_value",
    "special_day",
)
CODES = ("operating_system", "browser", "region", "traffic_type")

KEY_COLUMN = "session_id"
LABEL_COLUMN = "converted"

SESSION_SCHEMA = pa.schema(
    [
        ("session_id", pa.int64()),
        ("admin_pages", pa.int32()),
        ("admin_seconds", pa.float64()),
        ("info_pages", pa.int32()),
        ("info_seconds", pa.float64()),
        ("product_pages", pa.int32()),
        ("product_seconds", pa.float64()),
        ("bounce_rate", pa.float64()),
        ("exit_rate", pa.float64()),
        ("page_value", pa.float64()),
        ("special_day", pa.float64()),
        ("month", pa.string()),
        ("operating_system", pa.int32()),
        ("browser", pa.int32()),
        ("region", pa.int32()),
        ("traffic_type", pa.int32()),
        ("visitor_type", pa.string()),
        ("weekend", pa.bool_()),
        ("converted", pa.bool_()),
    ]
)

# Original UCI column name -> session schema name.
UCI_COLUMNS = {
    "Administrative": "admin_pages",
    "Administrative_Duration": "admin_seconds",
    "Informational": "info_pages",
    "Informational_Duration": "info_seconds",
    "ProductRelated": "product_pages",
    "ProductRelated_Duration": "product_seconds",
    "BounceRates": "bounce_rate",
    "ExitRates": "exit_rate",
    "PageValues": "page_value",
    "SpecialDay": "special_day",
    "Month": "month",
    "OperatingSystems": "operating_system",
    "Browser": "browser",
    "Region": "region",
    "TrafficType": "traffic_type",
    "VisitorType": "visitor_type",
    "Weekend": "weekend",
    "Revenue": "converted",
}


def bundled_sessions_path() -> Path:
    """Path of the bundled real sessions (Parquet, session schema, with labels)."""
    return Path(str(resources.files("scorer") / "data" / "sessions.parquet"))


def load_bundled_sessions() -> pa.Table:
    """The 12,330 bundled real sessions as an Arrow table."""
    import pyarrow.parquet as pq

    return pq.read_table(bundled_sessions_path())


def convert_uci_csv(csv_path: str | Path) -> pa.Table:
    """Read the original UCI CSV and return it in the session schema.

    ``session_id`` is the CSV row number; ``June`` becomes ``Jun``; ``TRUE``/``FALSE`` become booleans.
    """
    import pyarrow.compute as pc
    from pyarrow import csv

    raw = csv.read_csv(
        csv_path,
        convert_options=csv.ConvertOptions(
            true_values=["TRUE"], false_values=["FALSE"], strings_can_be_null=False
        ),
    )
    missing = sorted(set(UCI_COLUMNS) - set(raw.column_names))
    if missing:
        raise ValueError(f"{csv_path}: not the UCI sessions file, missing columns {missing}")
    renamed = raw.select(list(UCI_COLUMNS)).rename_columns(list(UCI_COLUMNS.values()))
    month = pc.replace_substring(renamed["month"], "June", "Jun")
    columns = {name: renamed[name] for name in renamed.column_names}
    columns["month"] = month
    columns["session_id"] = pa.array(range(renamed.num_rows), pa.int64())
    return pa.table(
        [columns[field.name].cast(field.type) for field in SESSION_SCHEMA], schema=SESSION_SCHEMA
    )
