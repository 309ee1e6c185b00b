"""The pool of scoring actors: created together, spread over the nodes, replaced one by one.

`scorer.pipeline.executors` decides what runs where and the driver retries shards; this module
only owns the actors: their resources and settings, waiting until Ray has placed them, and
replacing one that died. A replacement gets no shard until it is placed, so a lost node never leaves a shard
waiting on an actor that cannot start.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

from scorer.errors import ClusterError
from scorer.pipeline.actor import ScoringActor
from scorer.pipeline.cluster import ClusterInfo
from scorer.pipeline.outcome import ShardOutcome
from scorer.pipeline.plan import Shard
from scorer.pipeline.retry import Failure, ray_failure
from scorer.pipeline.shipping import ActorSettings

# How long an actor may wait for a place on the cluster before the run gives up on it.
PLACEMENT_TIMEOUT_S = 120.0

ObjectRef = Any
"""A Ray ``ObjectRef`` (Ray's types are not followed here: see pyproject's mypy section)."""


class Workers(Protocol):
    """What the driver's loop dispatches to: the actor pool, or the in-process worker
    (`local.InProcessWorker`). Workers are numbered; `idle` holds those free for a shard."""

    size: int
    idle: list[int]

    def has_starting(self) -> bool:
        """Whether a worker is still being placed (it gets shards once `poll` admits it)."""
        ...

    def submit(self, index: int, shard: Shard, attempt: int, has_label: bool) -> Any:
        """Send a shard to worker `index`; returns the attempt's handle."""
        ...

    def wait(self, handles: list[Any], timeout: float) -> list[Any]:
        """The handles among `handles` that are done, waiting at most `timeout` seconds for one
        (a worker placed meanwhile ends the wait too)."""
        ...

    def fetch(self, handle: Any, index: int) -> ShardOutcome | Failure:
        """The attempt's outcome or failure; its worker goes back to `idle`, or is replaced."""
        ...

    def poll(self, busy: int) -> None:
        """Admit the workers placed since the last call."""
        ...

    def shutdown(self) -> None: ...


@dataclass(frozen=True)
class PoolSpec:
    """What the pool is asked for: what each actor is shipped, and what it takes of the cluster."""

    settings: ActorSettings
    actors: int | None = None
    """How many; None: as many as the cluster's CPUs hold."""
    cpus_per_actor: float = 1.0
    memory_per_actor_mb: int | None = None
    shards_per_actor: int = 1
    """Shards an actor holds at once: with 2, the next one is opened and read ahead while the
    first is scored (object storage); it is scored after, never beside it."""


class ActorPool:
    """The scoring actors: created together, replaced one by one when they die."""

    def __init__(self, spec: PoolSpec, cluster: ClusterInfo, wanted: int) -> None:
        import ray

        per_actor = spec.cpus_per_actor
        size = spec.actors or max(1, int(cluster.cpus // per_actor))
        self.size = max(1, min(size, wanted))
        options: dict[str, Any] = {
            "num_cpus": per_actor,
            "max_restarts": 0,  # the pool replaces a dead actor itself and counts the attempt
            "scheduling_strategy": "SPREAD",
        }
        if spec.memory_per_actor_mb:
            options["memory"] = spec.memory_per_actor_mb * 1024 * 1024
        self.settings_ref = ray.put(spec.settings)
        self.actor_class = ray.remote(ScoringActor).options(**options)
        self.actors = [self.actor_class.remote(self.settings_ref) for _ in range(self.size)]
        # A slot per shard an actor may hold, the first slots of all actors popped first.
        self.slots = max(1, spec.shards_per_actor)
        self.idle = list(range(self.size)) * self.slots
        self.idle.reverse()
        self.held: dict[ObjectRef, Any] = {}  # attempt ref -> the actor it was sent to
        self.starting: dict[ObjectRef, tuple[int, float]] = {}  # ready ref -> (index, deadline)
        self.cpus_per_actor, self.memory_mb = per_actor, spec.memory_per_actor_mb

    def wait_ready(self) -> None:
        """Wait for the actors to load the model; go on with those placed within the timeout."""
        import ray

        refs = {self.actors[index].ready.remote(): index for index in range(self.size)}
        ready, pending = ray.wait(list(refs), num_returns=len(refs), timeout=PLACEMENT_TIMEOUT_S)
        ray.get(ready)  # an actor that failed to start (e.g. its model) raises here
        if not ready:
            raise ClusterError(self._unplaced(f"none of {self.size} actor(s)"))
        for ref in pending:  # they join when placed (an autoscaler adding nodes)
            self._drop_slots(refs[ref])
            self.starting[ref] = (refs[ref], time.monotonic() + PLACEMENT_TIMEOUT_S)

    def submit(self, index: int, shard: Shard, attempt: int, has_label: bool) -> ObjectRef:
        """Send a shard to actor ``index``; the ref resolves to its ``outcome.ShardOutcome``."""
        ref = self.actors[index].score_shard.remote(shard, attempt, has_label)
        self.held[ref] = self.actors[index]
        return ref

    def has_starting(self) -> bool:
        return bool(self.starting)

    def wait(self, handles: list[ObjectRef], timeout: float) -> list[ObjectRef]:
        import ray

        # Replacement actors are waited on too: one placed meanwhile is admitted by `poll`.
        done, _ = ray.wait([*handles, *self.starting], num_returns=1, timeout=timeout)
        return [ref for ref in done if ref not in self.starting]

    def fetch(self, handle: ObjectRef, index: int) -> ShardOutcome | Failure:
        import ray
        from ray.exceptions import RayError

        actor = self.held.pop(handle, None)
        try:
            outcome: ShardOutcome = ray.get(handle)
        except RayError as exc:
            failure = ray_failure(exc)
            if failure.actor_lost:
                # The second shard a lost actor held fails too: it is replaced once.
                if actor is self.actors[index]:
                    self.replace(index)
            else:
                self._free_slot(index)
            return failure
        self._free_slot(index)
        return outcome

    def _free_slot(self, index: int) -> None:
        """Actor `index` may take one more shard: an actor with none in hand goes first."""
        busy = any(actor is self.actors[index] for actor in self.held.values())
        if busy:
            self.idle.insert(0, index)
        else:
            self.idle.append(index)

    def _drop_slots(self, index: int) -> None:
        self.idle[:] = [i for i in self.idle if i != index]

    def replace(self, index: int) -> None:
        import ray

        ray.kill(self.actors[index], no_restart=True)
        self._drop_slots(index)
        self.actors[index] = self.actor_class.remote(self.settings_ref)
        # Idle only once placed: a shard sent to an actor that cannot be placed would wait forever.
        self.starting[self.actors[index].ready.remote()] = (
            index,
            time.monotonic() + PLACEMENT_TIMEOUT_S,
        )

    def poll(self, busy: int) -> None:
        """Admit placed replacements; fail clearly when no actor is left and none can be placed."""
        import ray
        from ray.exceptions import RayActorError

        if not self.starting:
            return
        ready, _ = ray.wait(list(self.starting), num_returns=len(self.starting), timeout=0)
        for ref in ready:
            index, _deadline = self.starting.pop(ref)
            try:
                ray.get(ref)
            except RayActorError:  # died while starting (its node went too): try again
                self.replace(index)
                continue
            self.idle.extend([index] * self.slots)
        now = time.monotonic()
        if (
            not self.idle
            and not busy
            and all(deadline < now for _, deadline in self.starting.values())
        ):
            raise ClusterError(
                self._unplaced(f"no actor is left and {len(self.starting)} replacement(s)")
            )

    def _unplaced(self, what: str) -> str:
        memory = f", {self.memory_mb} MB memory" if self.memory_mb else ""
        return (
            f"{what} could be placed on the cluster within {PLACEMENT_TIMEOUT_S:.0f} s (each "
            f"needs {self.cpus_per_actor:g} CPU{memory}): check `ray status` for dead nodes and "
            "free resources, or lower --cpus-per-actor / --memory-per-actor-mb"
        )

    def shutdown(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)
