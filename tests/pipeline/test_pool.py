"""The actor pool on the real local Ray: a killed actor is replaced, placed, and scores again;
`retry.ray_failure` reads the real error it leaves."""

from __future__ import annotations

import time

import pytest
from support.inputs import make_history

from scorer.model.runtime import default_model_dir, load_model
from scorer.pipeline.layout import OutputLayout
from scorer.pipeline.outcome import ShardOutcome
from scorer.pipeline.packing import plan_shards
from scorer.pipeline.pool import ActorPool, PoolSpec
from scorer.pipeline.retry import ray_failure, will_retry
from scorer.pipeline.scan import scan_inputs
from scorer.pipeline.shipping import ActorSettings
from scorer.storage import resolve


@pytest.fixture
def pool(ray_cluster, tmp_path):
    source = make_history(tmp_path / "in", sessions=4_000, files=1, days=1)
    card = load_model().card
    model_dir = default_model_dir()
    settings = ActorSettings(
        model_files={n: (model_dir / n).read_bytes() for n in ("model.onnx", "model.json")},
        threads=1,
        batch_rows=1_000,
        key_column=card.key_column,
        keep=(),
        label_column=card.label_column,
        run_id="run-pool",
        input_location=resolve(source),
        layout=OutputLayout(resolve(tmp_path / "out")),
    )
    pool = ActorPool(PoolSpec(settings, actors=1), ray_cluster, wanted=4)
    pool.wait_ready()
    pool.shards = plan_shards(scan_inputs(resolve(source)), 2_000).shards
    try:
        yield pool
    finally:
        pool.shutdown()


def test_the_pool_is_sized_by_the_spec_and_the_shards(ray_cluster, pool):
    assert pool.size == 1 and pool.idle == [0] and not pool.starting


def test_a_killed_actor_is_replaced_placed_and_scores_a_shard(pool):
    import ray
    from ray.exceptions import RayActorError

    first, second = pool.shards[:2]
    index = pool.idle.pop()
    outcome = ray.get(pool.submit(index, first, 1, True))
    assert isinstance(outcome, ShardOutcome) and outcome.rows == first.rows
    dead = outcome.pid

    ray.kill(pool.actors[index], no_restart=True)
    with pytest.raises(RayActorError) as caught:
        ray.get(pool.submit(index, second, 1, True))
    failure = ray_failure(caught.value)
    assert failure.actor_lost and failure.retryable and failure.error.startswith("actor died: ")
    assert will_retry(failure, attempt=1, max_attempts=3)

    pool.replace(index)
    assert pool.starting and index not in pool.idle  # no shard until it is placed
    deadline = time.monotonic() + 60
    while index not in pool.idle:
        assert time.monotonic() < deadline, "the replacement was never placed"
        pool.poll(busy=0)
        time.sleep(0.1)
    assert not pool.starting

    outcome = ray.get(pool.submit(pool.idle.pop(), second, 2, True))
    assert outcome.rows == second.rows and outcome.pid != dead
