"""The Ray actor: a shell that owns a worker's state — the model's onnxruntime session, loaded
once from what the driver shipped (`shipping`), the stage threads and who it is — and streams
each shard it is given through `stages.stream_queued`.

All the work is elsewhere, testable without Ray: reading (`reading`), the stages and their
overlap (`stages`), the sink (`sink`). This module is the only one of them that imports Ray.
"""

from __future__ import annotations

import asyncio
import os

from scorer.pipeline.outcome import Identity, ShardOutcome
from scorer.pipeline.plan import Shard
from scorer.pipeline.shipping import ActorSettings, load_shipped_model
from scorer.pipeline.stages import ShardScorer, StageThreads, stream_queued


class ScoringActor:
    """Holds the model session; `score_shard` streams one shard into the output layout."""

    def __init__(self, settings: ActorSettings) -> None:
        self.scorer = ShardScorer(settings, load_shipped_model(settings))
        self.threads = StageThreads.start()
        self.identity = _identity()
        self.turn = asyncio.Lock()

    async def ready(self) -> Identity:
        """Who and where this actor is (answers once the session is loaded)."""
        return self.identity

    async def score_shard(self, shard: Shard, attempt: int, has_label: bool) -> ShardOutcome:
        return await stream_queued(
            self.scorer, shard, has_label, self.threads, self.identity, self.turn
        )


def _identity() -> Identity:
    import ray

    context = ray.get_runtime_context()
    return Identity(
        actor_id=context.get_actor_id() or "",
        node_id=context.get_node_id(),
        node_ip=ray.util.get_node_ip_address(),
        pid=os.getpid(),
    )
