"""Stage 2 (jobs/personalize.py): a response policy trained with GRPO against a frozen personalized reward
model on local Ray — logged with the learned reward and the true utility side by side — its exact resume,
and its refusals of bad input. The ground-truth pieces are tested by hand in test_utility.py / here."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from conftest import ROOT, run_job

TINY = [
    "prompts_per_iter=4",
    "rollout.n_samples=2",
    "policy.minibatch_size=8",
    "eval_limit=8",
    "rollout.max_new_tokens=24",
    "rollout.kv_cache_gib=0.1",
    "rollout.max_model_len=512",
    "ray.num_cpus=2",
]
PHASES = ("generate", "score", "reference", "advantages", "train_policy", "sync_weights")


@pytest.fixture(scope="module")
def oracle_rm(tiny_data, tiny_models, tmp_path_factory):
    """A jobs.train_rm run with oracle conditioning: the reward source (reads the true description)."""
    run = tmp_path_factory.mktemp("source") / "rm-oracle"
    run_job(
        "jobs.train_rm", f"data.dir={tiny_data}", f"models.reward_model={tiny_models / 'reward_model'}",
        f"run_dir={run}", "rm.conditioning=oracle", "rm.steps=6", "rm.batch_size=8", "rm.eval_every=6",
        "rm.eval_limit=16", "rm.max_length=384", "deepspeed.num_ranks=1", "rank_resources.num_cpus=0.5",
        "ray.num_cpus=2",
    )  # fmt: skip
    return run


def _events(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _train(run) -> dict[int, dict]:
    return {e["step"]: e for e in _events(run) if e["split"] == "train"}


@pytest.fixture(scope="module")
def straight(oracle_rm, tiny_models, tmp_path_factory):
    """(base arguments, run dir) of an uninterrupted 4-iteration run: the reference of the resume and fault tests."""
    base = [f"source={oracle_rm}", f"policy_model={tiny_models / 'response_policy'}", *TINY, "checkpoint_every=2"]
    run = tmp_path_factory.mktemp("personalize") / "straight"
    run_job("jobs.personalize", *base, "iterations=4", "eval_every=2", f"run_dir={run}")
    return base, run


def _same_metrics(want: dict, have: dict, step: int) -> None:
    """Every logged figure but timings (and the restart count) equal, as an exact resume gives."""
    skip = ("split", "step", "rollout_restarts")
    want = {k: v for k, v in want.items() if not k.startswith("time") and k not in skip}
    have = {k: v for k, v in have.items() if not k.startswith("time") and k not in skip}
    assert want.keys() == have.keys()
    for key in want:
        assert have[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7), f"iteration {step}: {key}"


@pytest.mark.slow
def test_personalize_logs_truth_survives_a_killed_engine_and_policy_rank_and_resumes_exactly(straight, tmp_path):
    base, straight = straight
    parted = tmp_path / "parted"
    train = _train(straight)
    assert sorted(train) == [1, 2, 3, 4]
    for e in train.values():
        for name in PHASES:
            assert e[f"time_{name}"] >= 0, name
        for name in ("learned_reward", "true_utility", "kl", "policy_loss"):
            assert e[name] is not None and math.isfinite(e[name]), name
        assert e["weight_version"] == e["step"] and e["rollout_weight_version"] == e["step"] - 1
    val = [e for e in _events(straight) if e["split"] == "validation"]
    assert [e["step"] for e in val] == [2, 4]
    for e in val:  # the learned reward and the truth, side by side
        assert {"learned_reward", "true_utility", "win_rate_vs_base", "personalized_share"} <= set(e)
        assert 0.0 <= e["win_rate_vs_base"] <= 1.0 and 0.0 <= e["personalized_share"] <= 1.0
    assert (straight / "best" / "policy" / "config.json").is_file() and (straight / "last" / "policy").is_dir()
    assert (straight / "base_responses" / "validation.parquet").is_file()
    result = json.loads((straight / "eval.json").read_text())  # the best policy on the test splits
    assert sorted(result["splits"]) == ["test_seen_users", "test_unseen_users"]  # pets_ood: another world
    for split in result["splits"].values():
        assert {"all", "helpful", "harmless"} <= set(split) and 0.0 <= split["all"]["win_rate_vs_base"] <= 1.0
    assert result["ceilings"]["personalization_gap"] == pytest.approx(0.5)

    # The first part survives a fault (issue 17): its rollout engine process is killed by PID after iteration
    # 1; the job starts a new rollout actor with weight version 1 and generates iteration 2's batch again.
    lines = _run_killing_after(1, "RolloutActor", [*base, "iterations=2", "eval_every=2", f"run_dir={parted}"])
    assert any("restarting it with weight version 1" in x for x in lines), "".join(lines)
    # The resumed part loses a DeepSpeed policy rank in iteration 4 (killed once iteration 3 is logged): the job
    # stops every actor and continues from the checkpoint at iteration 2, so iteration 3 is trained again
    # and logged once.
    out = "".join(_run_killing_after(3, "PolicyRank", ["--resume", str(parted), "iterations=4"]))
    assert f"resumed {parted} at iteration 2 (weight version 2)" in out
    assert "!! policy rank 0 died: " in out, out[-3000:]
    assert "restart 1/2: stopping every actor, starting again from the checkpoint at iteration 2" in out
    assert json.loads((parted / "restarts.json").read_text())[0]["from_iteration"] == 2
    got = _train(parted)
    assert sorted(got) == [1, 2, 3, 4]
    assert [got[i]["rollout_restarts"] for i in (1, 2, 3, 4)] == [0, 1, 0, 0]  # a resumed job starts at 0 again
    for step in (1, 2, 3, 4):  # the faulted iteration and the resumed ones alike equal the uninterrupted run
        _same_metrics(train[step], got[step], step)
    val = {e["step"]: e for e in _events(parted) if e["split"] == "validation"}
    ref = {e["step"]: e for e in _events(straight) if e["split"] == "validation"}
    for step in (2, 4):
        _same_metrics(ref[step], val[step], step)


def _kill(job_pid: int, actor: str) -> int:
    """SIGKILL the process of the job's (one) ``actor`` (a Ray actor class: its process title); its PID.
    The rollout actor's process runs its vLLM engine (rollout.engine_in_process, the default)."""
    import psutil

    found = [
        p
        for p in psutil.process_iter(["cmdline"])
        if (p.info["cmdline"] or [""])[0].startswith(f"ray::{actor}") and job_pid in [a.pid for a in p.parents()]
    ]
    assert len(found) == 1, found
    if actor == "RolloutActor":
        assert not [c for c in found[0].children() if c.cmdline()[:1] == ["VLLM::EngineCore"]], "engine not in process"
    found[0].kill()
    return found[0].pid


def _run_killing_after(iteration: int, actor: str, args: list[str]) -> list[str]:
    """Run jobs.personalize, SIGKILL its ``actor``'s process once it has logged ``iteration``; its output."""
    cmd = [sys.executable, "-m", "jobs.personalize", *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, killed = [], None
    for line in proc.stdout:
        lines.append(line)
        if killed is None and line.startswith(f"iter {iteration}/"):
            killed = _kill(proc.pid, actor)
    assert proc.wait(timeout=600) == 0, "".join(lines[-60:])
    assert killed is not None, "".join(lines)
    return lines


def _exit_2(*args) -> str:
    proc = subprocess.run([sys.executable, "-m", "jobs.personalize", *args], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode in (1, 2), proc.stderr
    return proc.stderr


def test_a_source_without_a_reward_model_is_named(tmp_path):
    (tmp_path / "config.yaml").write_text(f"data: {{dir: {tmp_path}}}\nmodels: {{reward_model: x}}\n")
    err = _exit_2(f"source={tmp_path}", "policy_model=p")
    assert f"source={tmp_path}" in err and "no checkpoint" in err, err


def test_a_world_without_true_utilities_is_refused(oracle_rm, tiny_data, tiny_models, tmp_path):
    import shutil

    data = tmp_path / "own"  # the same rows, but no dataset.json: a user's own data has no true utilities
    data.mkdir()
    for split in ("train", "validation"):
        shutil.copy(tiny_data / f"{split}.parquet", data / f"{split}.parquet")
    err = _exit_2(f"source={oracle_rm}", f"policy_model={tiny_models / 'response_policy'}", f"data.dir={data}",
                  f"run_dir={tmp_path / 'run'}")  # fmt: skip
    assert f"data.dir={data}" in err and "no dataset.json, so no ground truth" in err, err


def test_a_plus_run_is_a_source_with_its_summarizer(tmp_path):
    from jobs.personalize import load_source
    from rlhf_cluster.cli import dump_yaml
    from rlhf_cluster.config import PlusConfig
    from rlhf_cluster.personalize_config import PersonalizeConfig

    run = tmp_path / "plus"
    plus = PlusConfig(data={"dir": "d"}, models={"summarizer": "s", "reward_model": "r"}, rm={"max_length": 99})
    for role in ("reward_model", "summarizer"):
        (run / "best" / role).mkdir(parents=True)
        (run / "best" / role / "config.json").write_text("{}")
    (run / "config.yaml").write_text(dump_yaml(plus))
    src = load_source(PersonalizeConfig(source=str(run), policy_model="p"))
    assert (src.reward_model, src.summarizer) == (str(run / "best" / "reward_model"), str(run / "best" / "summarizer"))
    assert (src.conditioning, src.label, src.run.rm.max_length) == ("summary", "PLUS", 99)


def test_config_errors_exit_2():
    for args, message in (
        (["rollout.n_samples=1"], "n_samples must be ≥ 2"),
        (["reward=serve"], "reward=serve needs serve_url"),
        (["prompts_per_iter=3", "rollout.n_samples=2", "policy.minibatch_size=4"], "must divide"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "jobs.personalize", "source=s", "policy_model=p", *args],
            cwd=ROOT, capture_output=True, text=True,
        )  # fmt: skip
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
