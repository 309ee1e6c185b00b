"""Where a shard is retried: what a failed attempt means, and whether its shard goes back in line.

An attempt whose actor died (or hit any other Ray error) is retried until ``max_attempts``,
after ``pool.ActorPool`` replaced the actor; so is a commit the manifest refused. An input that
cannot be read fails its shard at once: bad data stays bad, and a packed shard's poison file
fails alone while the shard's other files go back in line (``split_poison``). ``ray_failure``
is the one place Ray's exceptions become a ``Failure``; ``will_retry`` is the decision.
"""

from __future__ import annotations

from dataclasses import dataclass

from scorer.errors import ScorerError, ShardReadError
from scorer.pipeline.packing import split_off
from scorer.pipeline.plan import Shard


@dataclass(frozen=True)
class Failure:
    """A failed attempt: the error for the stats and the terminal, and what it implies."""

    error: str
    retryable: bool
    actor_lost: bool = False
    """The actor (its worker or its node) is gone: the pool replaces it."""
    input_path: str | None = None
    """The input file that could not be read (`ShardReadError.input_path`), where known."""


def will_retry(failure: Failure, attempt: int, max_attempts: int) -> bool:
    """Whether the shard of a failed ``attempt`` (1-based) is tried again."""
    return failure.retryable and attempt < max_attempts


def split_poison(shard: Shard, failure: Failure) -> tuple[Shard, Shard | None] | None:
    """A packed shard failed by one file that cannot be read: that file's pieces as a shard of
    their own (to fail, not retried) and the rest (None when nothing is left) to score in this
    run. None when the failure is not that: the shard fails or is retried whole."""
    poison = failure.input_path
    files = {p.input_path for p in shard.pieces}
    if poison in files and len(files) > 1 and not failure.retryable:
        return split_off(shard, poison)
    return None


def ray_failure(exc: BaseException) -> Failure:
    """What a Ray error from ``ray.get`` of an attempt means; anything else is raised again."""
    from ray.exceptions import RayActorError, RayError, RayTaskError

    if isinstance(exc, RayActorError):
        return Failure(f"actor died: {first_line(exc)}", retryable=True, actor_lost=True)
    if isinstance(exc, RayTaskError):
        cause = exc.cause if isinstance(exc.cause, BaseException) else exc.as_instanceof_cause()
        return local_failure(cause)
    if isinstance(
        exc, RayError
    ):  # its worker or node died otherwise (OutOfMemoryError, NodeDiedError)
        return Failure(f"{type(exc).__name__}: {first_line(exc)}", retryable=True, actor_lost=True)
    raise exc


def local_failure(exc: BaseException) -> Failure:
    """What an error of a shard scored in the driver process (or raised in an actor) means: an
    unreadable input is not retried, and names its file; anything else is retried."""
    if isinstance(exc, ShardReadError):
        path = getattr(exc, "input_path", None)  # absent on Ray's as_instanceof_cause copies
        return Failure(one_line(exc), retryable=False, input_path=path)
    return Failure(one_line(exc), retryable=True)


def commit_failure(exc: ScorerError) -> Failure:
    """A commit the manifest refused (rows out ≠ rows in, storage full): tried again."""
    return Failure(f"{type(exc).__name__}: {exc}", retryable=True)


def one_line(exc: BaseException) -> str:
    """An error raised in an actor, whole, on one line: its message names the file (for the
    stats and the terminal), and the reason is often on the lines after (pyarrow's are)."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    if not isinstance(exc, ScorerError):
        text = f"{type(exc).__name__}: {text}"
    return text[:1000]


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    # Ray prefixes task errors with a traceback header; the cause's message is the last line.
    return (lines[-1] if lines else repr(exc))[:500]
