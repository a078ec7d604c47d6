"""rlhf_cluster.restarts: which errors are actor deaths, and the bounded restart loop — on real Ray actors
whose processes are killed (the jobs' own fault test is in tests/test_personalize.py)."""

from __future__ import annotations

import json
import os
import signal
from types import SimpleNamespace

import pytest

from rlhf_cluster.restarts import ActorDied, actor_death, run_restarting


def _death(ray) -> Exception:
    """The error a call to an actor whose process was SIGKILLed raises."""

    @ray.remote(num_cpus=0)
    class Victim:
        def pid(self) -> int:
            return os.getpid()

        def work(self) -> int:
            return 1

    victim = Victim.remote()
    os.kill(ray.get(victim.pid.remote()), signal.SIGKILL)
    with pytest.raises(ray.exceptions.RayActorError) as info:
        for _ in range(50):
            ray.get(victim.work.remote(), timeout=30)
    return info.value


@pytest.fixture(scope="module")
def death(ray_local):
    return _death(ray_local)


def test_a_killed_actor_is_a_death_named_by_its_class_and_other_errors_are_not(ray_local, death):
    assert actor_death(death).startswith("Victim died: ")
    assert actor_death(ActorDied("policy rank 1", death)).startswith("policy rank 1 died: ")

    @ray_local.remote(num_cpus=0)
    class Buggy:
        def __init__(self, fail: bool = False):
            if fail:
                raise ValueError("bad checkpoint")

        def work(self):
            raise ValueError("a bug in actor code")

    with pytest.raises(ValueError) as raised:  # an exception raised by actor code (RayTaskError)
        ray_local.get(Buggy.remote().work.remote())
    assert actor_death(raised.value) is None
    with pytest.raises(ray_local.exceptions.RayActorError) as init:  # a constructor's error: not retried either
        ray_local.get(Buggy.remote(fail=True).work.remote())
    assert init.value.actor_init_failed and actor_death(init.value) is None
    assert actor_death(ValueError("x")) is None and actor_death(FloatingPointError("nan")) is None


def _cfg(run_dir, max_restarts: int):
    return SimpleNamespace(run_dir=str(run_dir), iterations=10, max_restarts=max_restarts)


def _train_dying(death, times: int, run_dir, checkpoint_at: int | None):
    calls = []

    def train(cfg, resume: bool) -> dict:
        calls.append(resume)
        if len(calls) <= times:
            if checkpoint_at and len(calls) == 1:  # the first attempt got as far as a checkpoint
                (run_dir / "checkpoint").mkdir(exist_ok=True)
                (run_dir / "checkpoint" / "state.json").write_text(json.dumps({"iteration": checkpoint_at}))
            raise ActorDied("policy rank 0", death)
        return {"done": True}

    return train, calls


def test_restarts_from_the_checkpoint_then_gives_up_naming_the_role(death, tmp_path, capsys):
    shutdowns = []
    train, calls = _train_dying(death, 2, tmp_path, checkpoint_at=4)
    result = run_restarting(train, _cfg(tmp_path, 2), resume=False, prog="job", shutdown=lambda: shutdowns.append(1))
    assert calls == [False, True, True] and len(shutdowns) == 2 and result["done"]
    assert [r["from_iteration"] for r in result["restarts"]] == [4, 4]
    assert json.loads((tmp_path / "restarts.json").read_text())[0]["cause"].startswith("policy rank 0 died")
    assert (
        "restart 1/2: stopping every actor, starting again from the checkpoint at iteration 4"
        in capsys.readouterr().out
    )

    train, calls = _train_dying(death, 3, tmp_path, checkpoint_at=4)
    with pytest.raises(SystemExit, match=r"policy rank 0 died: .*\n.*gave up after 2 restart\(s\) \(max_restarts=2\)"):
        run_restarting(train, _cfg(tmp_path, 2), resume=False, prog="job", shutdown=lambda: 0)
    assert len(calls) == 3


def test_without_a_checkpoint_the_run_starts_again_and_0_restarts_fails_at_once(death, tmp_path):
    train, calls = _train_dying(death, 1, tmp_path, checkpoint_at=None)
    result = run_restarting(train, _cfg(tmp_path, 1), resume=False, prog="j", shutdown=lambda: 0)
    assert calls == [False, False] and result["restarts"][0]["from_iteration"] == 0
    train, calls = _train_dying(death, 1, tmp_path, checkpoint_at=None)
    with pytest.raises(SystemExit, match="no checkpoint was written"):
        run_restarting(train, _cfg(tmp_path, 0), resume=False, prog="j", shutdown=lambda: 0)


def test_a_death_after_the_last_checkpoint_is_not_retried(death, tmp_path):
    train, calls = _train_dying(death, 1, tmp_path, checkpoint_at=10)  # training over: saving or evaluating died
    with pytest.raises(ActorDied):
        run_restarting(train, _cfg(tmp_path, 2), resume=False, prog="j", shutdown=lambda: 0)
    assert calls == [False]
