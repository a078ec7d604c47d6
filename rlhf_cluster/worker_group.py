"""Driver side of a DeepSpeed group: N rank actors in a placement group, batches split across them.

``WorkerGroup`` is role-agnostic: it reserves one bundle per rank, finds rank 0's node address and a
free port there, and starts N actors of a given class as ``cls.remote(rank, world_size, master_addr,
master_port, **kwargs)``. A role's group (``actors.reward_model.RewardModelGroup``) holds one and
defines explicit methods that call its ranks' methods by attribute — never by name string.

Batches are Arrow tables: ``split_even`` (training: N equal contiguous slices, else an error naming the
sizes) and ``split_near_even`` (scoring: any size) cut the driver's batch; results come back in rank
order, which is the input order.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from rlhf_cluster.config import ActorResources
from rlhf_cluster.ray_setup import ResourceError
from rlhf_cluster.restarts import ActorDied
from rlhf_cluster.schema import BatchError

# After one rank fails, give the others this long to finish; ranks still running by then are most
# likely blocked in a collective waiting for the failed one, so the group is shut down.
FAILURE_GRACE_S = 30.0


# The rendezvous port is free when rank 0's node is asked, but rank 0 listens on it only seconds later
# (actor start, imports); another process can take it in between. A group whose rank 0 then fails with
# EADDRINUSE is started again on a fresh port, at most this many times in all.
RENDEZVOUS_ATTEMPTS = 3


@ray.remote(num_cpus=0)
def _node_address_and_free_port() -> tuple[str, int]:
    """Runs in rank 0's bundle: this node's IP and a port that is free on it right now."""
    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    return ray.util.get_node_ip_address(), port


def rendezvous_address(strategy: PlacementGroupSchedulingStrategy) -> tuple[str, int]:
    """(master address, port) for a group whose rank 0 runs under ``strategy``."""
    return ray.get(_node_address_and_free_port.options(scheduling_strategy=strategy).remote())


def port_was_taken(error: BaseException) -> bool:
    """True when a rank failed because its rendezvous port was in use (torch's DistNetworkError text)."""
    text = str(error)
    return "EADDRINUSE" in text or "address already in use" in text.lower()


def bundle(res: ActorResources) -> dict[str, float]:
    """One placement-group bundle from a rank's resources (zero entries left out: Ray rejects them)."""
    out = {k: v for k, v in (("CPU", res.num_cpus), ("GPU", res.num_gpus)) if v > 0}
    if not out:
        raise ResourceError("a DeepSpeed rank needs num_cpus > 0 or num_gpus > 0")
    return out


def split_even(batch: pa.Table, n: int, where: str) -> list[pa.Table]:
    """N equal contiguous slices, in order; a row count not divisible by N is a BatchError naming both."""
    if batch.num_rows % n:
        raise BatchError(
            f"{where}: {batch.num_rows} rows do not split evenly over {n} ranks; use a batch size divisible by {n}"
        )
    return _take_slices(batch, np.split(np.arange(batch.num_rows), n))


def split_near_even(batch: pa.Table, n: int) -> list[pa.Table]:
    """N contiguous slices whose sizes differ by at most one (some empty if rows < N), in order."""
    return _take_slices(batch, np.array_split(np.arange(batch.num_rows), n))


def _take_slices(batch: pa.Table, index_groups: Sequence[np.ndarray]) -> list[pa.Table]:
    # take() copies; a zero-copy slice would carry (and pickle) the whole batch's buffers to every rank.
    return [batch.take(pa.array(idx, pa.int64())) for idx in index_groups]


class WorkerGroup:
    """N actors of ``actor_cls`` (a ``DeepSpeedRank`` subclass under @ray.remote), one per bundle."""

    def __init__(
        self,
        actor_cls: Any,
        num_ranks: int,
        resources: ActorResources,
        *,
        name: str = "deepspeed",
        ready_timeout_s: float = 600.0,
        **actor_kwargs: Any,
    ):
        self.name, self.world_size = name, num_ranks
        self.pg = placement_group([bundle(resources)] * num_ranks, strategy="PACK")  # unnamed: names are cluster-unique
        try:
            self._wait_placed(resources, ready_timeout_s)
            addr, port = rendezvous_address(self._in_bundle(0))
            # No GPU: DeepSpeed must select its CPU accelerator before its first import in the actor.
            env = {} if resources.num_gpus > 0 else {"DS_ACCELERATOR": "cpu"}
            self.workers = [
                actor_cls.options(
                    num_cpus=resources.num_cpus,
                    num_gpus=resources.num_gpus,
                    scheduling_strategy=self._in_bundle(i),
                    runtime_env={"env_vars": env} if env else None,  # merged into the job's runtime_env
                ).remote(rank=i, world_size=num_ranks, master_addr=addr, master_port=port, **actor_kwargs)
                for i in range(num_ranks)
            ]
        except BaseException:
            self.shutdown()
            raise

    def _in_bundle(self, i: int) -> PlacementGroupSchedulingStrategy:
        return PlacementGroupSchedulingStrategy(placement_group=self.pg, placement_group_bundle_index=i)

    def _wait_placed(self, resources: ActorResources, timeout_s: float) -> None:
        ready, _ = ray.wait([self.pg.ready()], timeout=timeout_s)
        if not ready:
            raise ResourceError(
                f"{self.name}: {self.world_size} ranks × {bundle(resources)} could not be placed within "
                f"{timeout_s:g} s (cluster has {ray.cluster_resources()}); lower the rank resources or num_ranks"
            )

    def gather(self, refs: list[ray.ObjectRef], first_rank: int = 0) -> list:
        """Results of one call per rank (ranks ``first_rank``, ``first_rank`` + 1, …), in rank order. The
        first error is raised once every rank has returned; ranks still running FAILURE_GRACE_S after it
        are stuck, and the group is shut down. A rank whose process died raises ``ActorDied`` naming the
        group and rank (the job restarts from its checkpoint: rlhf_cluster.restarts)."""
        pending, first_error = list(refs), None
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=FAILURE_GRACE_S if first_error else None)
            if not done:  # grace period over with ranks still blocked
                print(
                    f"{self.name}: {len(pending)} ranks still running {FAILURE_GRACE_S:g} s after a rank failed; "
                    "shutting the group down",
                    flush=True,
                )
                self.shutdown()
                raise first_error
            try:
                ray.get(done[0])
            except ray.exceptions.RayActorError as e:  # its process died (a constructor's error is not a death)
                died = not e.actor_init_failed
                rank = first_rank + refs.index(done[0])
                first_error = first_error or (ActorDied(f"{self.name} rank {rank}", e) if died else e)
            except Exception as e:
                first_error = first_error or e
        if first_error:
            raise first_error
        return ray.get(refs)

    def map_rows(self, batch: pa.Table, call: Callable[[Any, pa.Table], ray.ObjectRef]) -> pa.Table:
        """``call(rank_actor, shard)`` on a near-even slice of ``batch`` per rank; the returned tables
        concatenated in input order. Every rank must run (ZeRO-3 gathers parameters inside a forward),
        so a rank with no rows gets a stand-in row (the first) whose result is dropped."""
        shards = split_near_even(batch, self.world_size)
        stand_in = batch.slice(0, 1)
        refs = [call(w, s if s.num_rows else stand_in) for w, s in zip(self.workers, shards)]
        return pa.concat_tables([t for t, s in zip(self.gather(refs), shards) if s.num_rows])

    def shutdown(self) -> None:
        """Kill the rank actors and release their placement group (idempotent)."""
        for w in getattr(self, "workers", []):
            ray.kill(w)
        self.workers = []
        if self.pg is not None:
            remove_placement_group(self.pg)
            self.pg = None


def combine_metrics(per_rank: list[dict]) -> dict:
    """Per-rank train_step metrics → one dict: counts (keys ``n_*``) summed, ``seconds`` max, the rest
    averaged (loss, grad_norm, lr are already global — equal on every rank; shard means over equal shards)."""
    out = {}
    for key in per_rank[0]:
        values = [m[key] for m in per_rank]
        out[key] = (
            sum(values) if key.startswith("n_") else max(values) if key == "seconds" else sum(values) / len(values)
        )
    return out


class DeepSpeedGroupHandle:
    """The driver's handle on ``ds.num_ranks`` rank actors of one role: start-up, save, load, checksums,
    weights and shutdown, as explicit methods. A role's group names its rank class (``rank_cls``), its
    ``role`` and its default global batch, and adds its own methods (train_step, score …).

    ``global_batch_size`` (default: the role's) is the rows per optimizer step over all ranks; each rank
    takes an equal contiguous slice of every train batch.
    """

    rank_cls: Any = None
    role = "deepspeed"

    def __init__(
        self,
        model_path: str,
        train,
        ds,
        resources: ActorResources,
        seed: int = 0,
        global_batch_size: int | None = None,
        dtype: str = "float32",
    ):
        self.cfg, self.ds = train, ds
        kwargs = dict(
            model_path=str(model_path),
            train=train,
            ds=ds,
            seed=seed,
            global_batch_size=global_batch_size or self.default_batch_size(train),
            dtype=dtype,
        )
        for attempt in range(1, RENDEZVOUS_ATTEMPTS + 1):
            self.group = WorkerGroup(self.rank_cls, ds.num_ranks, resources, name=self.role, **kwargs)
            try:
                self.info = self.group.gather([w.info.remote() for w in self.ranks])  # raises a constructor's error
                return
            except BaseException as e:
                self.shutdown()
                if attempt == RENDEZVOUS_ATTEMPTS or not port_was_taken(e):
                    raise
                print(
                    f"{self.role}: the rendezvous port was taken before rank 0 listened on it; starting the "
                    f"group again on a fresh port (attempt {attempt + 1} of {RENDEZVOUS_ATTEMPTS})",
                    flush=True,
                )

    @staticmethod
    def default_batch_size(train) -> int:
        raise NotImplementedError

    def _train_step(self, batch: pa.Table, where: str) -> dict:
        """``train_step`` on an even shard per rank (all ranks step together); the ranks' metrics combined."""
        shards = split_even(batch, len(self.ranks), where)
        return combine_metrics(self.group.gather([w.train_step.remote(s) for w, s in zip(self.ranks, shards)]))

    def state_dict_ref(self) -> ray.ObjectRef:
        """Rank 0's weights (``state_dict_to_bytes``) as an object reference, once every other rank has
        returned. Pass it to another actor (``RolloutActor.update_weights.remote(ref, v)``): the bytes go
        from rank 0 through the object store to that actor, never through the driver. A failure on
        rank 0 is raised by the call that receives the reference."""
        refs = [w.state_dict_bytes.remote() for w in self.ranks]  # every rank calls (ZeRO-3 gathers)
        self.group.gather(refs[1:], first_rank=1)  # b"" each
        return refs[0]

    def state_dict_bytes(self) -> bytes:
        """The weights as ``state_dict_to_bytes`` bytes, fetched to the caller (tests, tools)."""
        return ray.get(self.state_dict_ref())

    @property
    def ranks(self) -> list:
        """The rank actors, rank 0 first (empty after shutdown)."""
        return self.group.workers

    def save(self, path: str) -> str:
        """Write the HF checkpoint directory at ``path`` (atomically; non-finite weights refused)."""
        return self.group.gather([w.save.remote(str(path)) for w in self.ranks])[0]

    def load(self, path: str) -> None:
        """Load the HF checkpoint at ``path`` on every rank (fresh optimizer state and LR warmup)."""
        self.group.gather([w.load.remote(str(path)) for w in self.ranks])

    def save_state(self, directory: str, tag: str) -> str:
        """Training state (weights, optimizer, LR schedule, step, RNG) of every rank under ``directory/tag``."""
        return self.group.gather([w.save_state.remote(str(directory), tag) for w in self.ranks])[0]

    def load_state(self, directory: str, tag: str) -> int:
        """Restore ``save_state``'s checkpoint on every rank (same number of ranks); returns the step."""
        return self.group.gather([w.load_state.remote(str(directory), tag) for w in self.ranks])[0]

    def parameter_checksums(self) -> list[float]:
        """One checksum per rank (sum of |w| in float64): equal when the ranks hold identical weights."""
        return self.group.gather([w.parameter_checksum.remote() for w in self.ranks])

    def shutdown(self) -> None:
        self.group.shutdown()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
