"""What a failed attempt means and whether its shard goes back in line (`scorer.pipeline.retry`):
a lost actor and a refused commit are retried until the last attempt, an unreadable input fails
its shard at once and names its file. Pure functions, real exceptions (Ray's included)."""

from __future__ import annotations

import pytest
from ray.exceptions import OutOfMemoryError, RayActorError, RayTaskError

from scorer.errors import ShardError, ShardReadError, StorageError
from scorer.pipeline.retry import (
    Failure,
    commit_failure,
    first_line,
    local_failure,
    one_line,
    ray_failure,
    will_retry,
)


@pytest.mark.parametrize(
    ("retryable", "attempt", "max_attempts", "expected"),
    [
        (True, 1, 3, True),
        (True, 2, 3, True),
        (True, 3, 3, False),  # the last attempt: the shard fails
        (True, 1, 1, False),  # --max-attempts 1: never retried
        (False, 1, 3, False),  # bad data stays bad
    ],
)
def test_a_shard_is_retried_while_its_failure_is_retryable_and_attempts_remain(
    retryable, attempt, max_attempts, expected
):
    failure = Failure("x", retryable=retryable)
    assert will_retry(failure, attempt, max_attempts) is expected


def test_an_unreadable_input_fails_at_once_naming_its_file():
    failure = local_failure(ShardReadError("in/a.parquet: cannot open: gone", "in/a.parquet"))
    assert failure == Failure(
        "in/a.parquet: cannot open: gone", retryable=False, input_path="in/a.parquet"
    )
    assert not will_retry(failure, 1, 3)


def test_any_other_error_of_a_shard_is_retried_and_named_by_its_type_on_one_line():
    failure = local_failure(OSError("read failed\n  while decoding\n\npage 3"))
    assert failure == Failure("OSError: read failed while decoding page 3", retryable=True)
    assert not failure.actor_lost and failure.input_path is None


def test_a_refused_commit_is_retried():
    failure = commit_failure(StorageError("out/_scorer/commits: disk full"))
    assert failure == Failure("StorageError: out/_scorer/commits: disk full", retryable=True)
    assert commit_failure(ShardError("rows out 9 != rows in 10")).retryable


def test_one_line_keeps_a_scorer_errors_message_as_it_is_and_caps_the_length():
    assert one_line(ShardReadError("a.parquet:\n missing column(s) month")) == (
        "a.parquet: missing column(s) month"
    )
    assert one_line(ValueError("x" * 5000)) == ("ValueError: " + "x" * 5000)[:1000]


def test_first_line_is_the_last_line_of_a_ray_traceback():
    assert first_line(RuntimeError("Traceback (most recent call last):\n  ...\nboom\n\n")) == "boom"
    assert first_line(RuntimeError("")) == "RuntimeError('')"


def test_ray_errors_become_failures_and_anything_else_is_raised_again():
    died = ray_failure(RayActorError())
    assert died.retryable and died.actor_lost and died.error.startswith("actor died: ")

    out_of_memory = ray_failure(OutOfMemoryError("Task was killed.\nMemory on the node was low"))
    assert out_of_memory == Failure(
        "OutOfMemoryError: Memory on the node was low", retryable=True, actor_lost=True
    )

    # An error raised in the actor arrives wrapped: it means what it means in the driver.
    cause = ShardReadError("in/a.parquet: unreadable", "in/a.parquet")
    wrapped = RayTaskError("score_shard", "Traceback...\nShardReadError: unreadable", cause)
    assert ray_failure(wrapped) == local_failure(cause)

    with pytest.raises(KeyError):
        ray_failure(KeyError("not Ray's"))
