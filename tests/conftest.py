"""Shared fixtures: one real local Ray for the whole test session, a small generated history,
and drivers run as a user runs them. Plain helpers the tests import live in tests/support/.

Every test that scores in-process joins the same Ray (``scorer.score`` reuses a connected Ray
and leaves it running), so the suite pays Ray's start-up once.
"""

from __future__ import annotations

import pytest
from support.faults import Drivers

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


@pytest.fixture
def drivers(tmp_path):
    """`scorer score` processes of their own (`support.faults.Drivers`), stopped after the test."""
    tracked = Drivers(tmp_path)
    yield tracked
    tracked.close()
