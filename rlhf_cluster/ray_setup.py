"""Join a Ray cluster, or start a local one sized to this machine; check that actors will fit.

- ``RayConfig.address`` or ``$RAY_ADDRESS`` set → join that cluster (this is what ``ray job submit``
  does for the job's driver: it exports RAY_ADDRESS, and the job's working dir travels with it).
- neither → start a local single-node Ray with ``num_cpus`` (default: all cores), no dashboard.

Actors that ask for more than the cluster has would stay pending forever; ``check_fits`` turns that
into an error that names the roles and the totals before any actor is created.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from rlhf_cluster.config import ActorResources, RayConfig


class ResourceError(RuntimeError):
    """The configured actors cannot be placed on this cluster."""


def init_ray(cfg: RayConfig) -> dict:
    """Connect or start Ray (idempotent). Returns the cluster's total resources."""
    import ray

    if not ray.is_initialized():
        address = cfg.address or os.environ.get("RAY_ADDRESS") or None
        common = dict(namespace=cfg.namespace, log_to_driver=cfg.log_to_driver)
        if address:
            ray.init(address=address, **common)
            where = f"joined Ray cluster at {address}"
        else:
            ray.init(
                address="local",  # a new local instance, even if a `ray start` cluster runs here
                num_cpus=cfg.num_cpus or os.cpu_count(),
                num_gpus=cfg.num_gpus,
                object_store_memory=cfg.object_store_memory_mb * 2**20 if cfg.object_store_memory_mb else None,
                include_dashboard=False,
                **common,
            )
            where = "started local Ray"
        res = ray.cluster_resources()
        print(f"ray: {where} ({res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs)", flush=True)
    return ray.cluster_resources()


def check_fits(requests: Mapping[str, ActorResources], cluster: Mapping[str, float]) -> None:
    """Raise ResourceError if the actors together ask for more CPUs/GPUs than the cluster has."""
    for kind, attr in (("CPU", "num_cpus"), ("GPU", "num_gpus")):
        need = sum(getattr(r, attr) for r in requests.values())
        have = float(cluster.get(kind, 0.0))
        if need > have + 1e-9:
            parts = ", ".join(f"{name}={getattr(r, attr):g}" for name, r in requests.items())
            raise ResourceError(
                f"actors ask for {need:g} {kind}s in total ({parts}) but the Ray cluster has {have:g}; "
                f"lower the *_resources.{attr} settings or add nodes"
            )


def actor_options(res: ActorResources) -> dict:
    """Ray ``.options(...)`` for one actor from its configured resources."""
    return {"num_cpus": res.num_cpus, "num_gpus": res.num_gpus}
