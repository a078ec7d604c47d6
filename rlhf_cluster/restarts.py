"""An RL job that restarts itself from its last checkpoint when one of its actors dies (issue 17).

A DeepSpeed rank, the reference or a critic rank whose process dies (killed, out of memory, node gone)
cannot be replaced alone: the group's collectives and optimizer state span every rank. The job then stops
all of its actors (``ray.shutdown``: every actor and placement group it owns goes with it), starts them
again and continues from ``run_dir/checkpoint`` — the same path as ``--resume``, which is exact, so the
iterations after a restart log what an uninterrupted run from that checkpoint logs, and the iterations
logged after the checkpoint are dropped and trained once more (never counted twice). With no checkpoint
yet, the run starts again from the beginning. After ``max_restarts`` restarts the job fails, naming the
role and the cause. Errors raised *by* actor code (a bug, bad data, a non-finite loss) are not deaths
and are never retried; a dead rollout actor is replaced in place (``rlhf_cluster.rl_step``).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


class ActorDied(RuntimeError):
    """An actor's process died under a call: ``role`` names it (e.g. "policy rank 1")."""

    def __init__(self, role: str, cause: BaseException):
        super().__init__(f"{role} died: {first_line(cause)}")
        self.role, self.cause = role, cause


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def actor_death(err: BaseException) -> str | None:
    """What died, if ``err`` says that an actor's process died (Ray's RayActorError family, or our
    ActorDied naming the role); None for every other error, which is not retried."""
    import ray

    if isinstance(err, ActorDied):
        return str(err)
    if isinstance(err, ray.exceptions.RayActorError) and not err.actor_init_failed:  # not a constructor's error
        found = re.search(r"class_name: ([\w.<>]+)", str(err))  # a nested class: f.<locals>.Name
        return f"{found.group(1).split('.')[-1] if found else 'an actor'} died: {first_line(err)}"
    return None


def checkpoint_iteration(run_dir: Path) -> int | None:
    """The iteration of run_dir/checkpoint/state.json; None when there is no checkpoint."""
    path = Path(run_dir) / "checkpoint" / "state.json"
    return json.loads(path.read_text())["iteration"] if path.is_file() else None


def run_restarting(
    train: Callable[[Any, bool], dict],
    cfg: Any,
    *,
    resume: bool,
    prog: str,
    shutdown: Callable[[], None] | None = None,
) -> dict:
    """``train(cfg, resume)`` until it returns; after an actor death, ``shutdown()`` (default ``ray.shutdown``)
    and ``train(cfg, True)`` from the checkpoint (``train(cfg, False)`` without one), at most
    ``cfg.max_restarts`` times. ``cfg`` also gives ``run_dir`` and ``iterations``. Each restart is printed
    and kept in run_dir/restarts.json; the result gains ``restarts``."""
    run_dir, iterations, max_restarts = Path(cfg.run_dir), cfg.iterations, cfg.max_restarts
    if shutdown is None:
        import ray

        shutdown = ray.shutdown
    restarts: list[dict] = []
    while True:
        try:
            result = train(cfg, resume)
            break
        except Exception as err:
            what = actor_death(err)
            if what is None:
                raise
            at = checkpoint_iteration(run_dir)
            if at is not None and at >= iterations:  # training was over: the failure is in saving/evaluating
                raise
            if len(restarts) >= max_restarts:
                raise SystemExit(
                    f"{prog}: {what}\n{prog}: gave up after {len(restarts)} restart(s) (max_restarts={max_restarts}); "
                    + (f"continue with --resume {run_dir}" if at else "no checkpoint was written")
                ) from err
            restarts.append({"cause": what, "from_iteration": at or 0, "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
            (Path(run_dir) / "restarts.json").write_text(json.dumps(restarts, indent=2))
            print(
                f"!! {what}\n!! restart {len(restarts)}/{max_restarts}: stopping every actor, starting again from "
                + (f"the checkpoint at iteration {at}" if at else "the beginning (no checkpoint yet)"),
                flush=True,
            )
            shutdown()
            resume = at is not None
    result["restarts"] = restarts
    return result
