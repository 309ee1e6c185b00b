"""intent-scorer: batch scoring of purchase-intent models over Parquet with async Ray actors."""

__version__ = "0.1.0"
