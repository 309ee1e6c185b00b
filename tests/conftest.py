"""Shared fixtures: one real local Ray for the whole test session, small generated histories,
drivers run as a user runs them, and a shard scorer without Ray.

Every test that scores in-process joins the same Ray (``scorer.score`` reuses a connected Ray
and leaves it running), so the suite pays Ray's start-up once.
"""

from __future__ import annotations

import pytest

from scorer.jobs.generate import generate


@pytest.fixture(scope="session")
def ray_cluster():
    """A private local Ray with 2 CPUs, started once through the scorer's own cluster module."""
    from scorer.pipeline.cluster import ray_session

    with ray_session(num_cpus=2) as info:
        yield info


@pytest.fixture(scope="session")
def history(tmp_path_factory):
    """A labelled, hive-partitioned history: 24,000 sessions, 4 files over 2 days, 2 row groups each."""
    root = tmp_path_factory.mktemp("history")
    generate(root, sessions=24_000, files=4, days=2, seed=7, row_group_rows=3_000)
    return root


def make_history(path, **options):
    """A fresh generated history for tests that modify their input."""
    defaults = dict(sessions=12_000, files=2, days=2, seed=11, row_group_rows=2_000)
    generate(path, **(defaults | options))
    return path


@pytest.fixture
def drivers(tmp_path):
    """`scorer score` processes of their own (`test_faults._Drivers`), stopped after the test."""
    from test_faults import _Drivers

    tracked = _Drivers(tmp_path)
    yield tracked
    tracked.close()


def shard_scorer(model, source, out, *, batch_rows, run_id, keep=(), key_column=None):
    """An actor's per-shard stages (`ShardScorer`) over local SOURCE, writing under OUT."""
    from scorer.pipeline.layout import OutputLayout
    from scorer.pipeline.shipping import ActorSettings
    from scorer.pipeline.stages import ShardScorer
    from scorer.storage import resolve

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
