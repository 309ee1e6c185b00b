"""An actor's per-shard stages without Ray, for the tests that score one shard at a time."""

from __future__ import annotations

from scorer.pipeline.layout import OutputLayout
from scorer.pipeline.shipping import ActorSettings
from scorer.pipeline.stages import ShardScorer
from scorer.storage import resolve


def shard_scorer(model, source, out, *, batch_rows, run_id, keep=(), key_column=None):
    """An actor's per-shard stages (`ShardScorer`) over local SOURCE, writing under OUT."""
    settings = ActorSettings(
        model_files={},  # read by ScoringActor only; the scorer gets the loaded model
        threads=1,
        batch_rows=batch_rows,
        key_column=key_column or model.card.key_column,
        keep=keep,
        label_column=model.card.label_column,
        run_id=run_id,
        input_location=resolve(source),
        layout=OutputLayout(resolve(out)),
    )
    return ShardScorer(settings, model)
