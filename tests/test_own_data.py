"""A user's own data end to end: PLUS-release rows with no user ids and no ground truth (no ``contested``,
``user_description``, ``p_chosen``, ``topic``) through train_rm, plus, evaluate and compare."""

from __future__ import annotations

import json

import pytest
from conftest import run_job
from test_plus import TINY as PLUS_TINY
from test_train_rm import TINY as RM_TINY


@pytest.fixture(scope="module")
def plus_release(tmp_path_factory):
    """The tiny pets world written as the PLUS release ships data (jobs.make_data format=plus)."""
    out = tmp_path_factory.mktemp("own") / "plus-release"
    args = ["pets.n_train_users=8", "pets.n_test_users=4", "pets.examples_per_user=4", "format=plus"]
    run_job("jobs.make_data", "--dataset", "pets", "--out", str(out), "--seed", "0", *args)
    assert not (out / "ceilings.json").exists() and (out / "train.jsonl").is_file()
    return out


@pytest.mark.slow
def test_plus_release_data_through_every_job(plus_release, tiny_models, tmp_path):
    rm_run, plus_run = tmp_path / "rm-context", tmp_path / "plus"
    proc = run_job(
        "jobs.train_rm",
        f"data.dir={plus_release}",
        f"models.reward_model={tiny_models / 'reward_model'}",
        f"run_dir={rm_run}",
        "rm.conditioning=context",
        *RM_TINY,
    )
    # the read report: pairs recovered from the context text, ids derived, eval pairs held out
    assert "PLUS format: 16 rows → 24 pairs (reward 16, train 8)" in proc.stderr
    assert "context pairs recovered from text in 16 of 16 rows (48 pairs)" in proc.stderr
    val = [json.loads(x) for x in (rm_run / "metrics.jsonl").read_text().splitlines() if '"validation"' in x]
    assert val and all(v["contested"] is None and 0 <= v["all"] <= 1 for v in val)  # not available, no crash

    run_job(
        "jobs.plus",
        f"data.dir={plus_release}",
        f"models.summarizer={tiny_models / 'summarizer'}",
        f"models.reward_model={tiny_models / 'reward_model'}",
        f"run_dir={plus_run}",
        *[a for a in PLUS_TINY if not a.startswith(("iterations", "rollout.backend"))],
        "iterations=2",
        "eval_every=2",
        "rollout.backend=hf",  # vLLM is tested elsewhere; here it would only add two engine starts
    )
    for run in (rm_run, plus_run / "evaluate"):
        run_job("jobs.evaluate", "--run", str(run), "ray.num_cpus=2")
        result = json.loads((run / "eval.json").read_text())
        # the held-out eval pairs are test splits of their own; nothing trained or selected on them
        assert {"train_eval", "validation_eval", "test_unseen_users"} <= set(result["accuracy"])
        assert "train" not in result["accuracy"] and "validation" not in result["accuracy"]
        assert result["ceilings"] is None and result["accuracy"]["train_eval"]["contested"] is None
    out = tmp_path / "compare"
    run_job("jobs.compare", "--runs", f"[{rm_run}, {plus_run / 'evaluate'}]", "--out", str(out))
    table = (out / "compare.md").read_text()
    assert "context" in table and "PLUS" in table


def test_curve_prints_where_each_run_saturates(tmp_path, capsys):
    from jobs import curve
    from rlhf_cluster.metrics import MetricsLogger

    for name, values in (("rm-bt", [0.6, 0.7, 0.7]), ("rm-oracle", [0.6, 0.8, 0.95])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text(f"rm: {{conditioning: {name[3:]}}}\n")
        with MetricsLogger(tmp_path / name, tensorboard=False) as log:
            for step, v in zip((100, 200, 300), values):
                log.log(step, {"all": v, "contested": None}, "validation")
    data = curve.main(["--runs", str(tmp_path / "rm-*")])
    out = capsys.readouterr().out
    assert data == {"bt (rm-bt)": {100: 0.6, 200: 0.7, 300: 0.7}, "oracle (rm-oracle)": {100: 0.6, 200: 0.8, 300: 0.95}}
    assert "bt (rm-bt): best 0.700 at step 200; within 0.01 of it from step 200\n" in out
    assert "oracle (rm-oracle): best 0.950 at step 300" in out and "still improving" in out
    with pytest.raises(SystemExit):
        curve.main(["--runs", str(tmp_path / "rm-*"), "--metric", "missing"])
    assert "no validation metric 'missing'; logged: all, contested" in capsys.readouterr().err
