"""`jobs.evaluate` end to end on a tiny run dir, and `jobs.compare` over hand-written evaluations.

The run dir is built as jobs.train_rm lays it out (config.yaml + best/ + best.json), with an untrained
scalar head: the numbers are near chance, but every one must equal a direct recomputation.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from jobs import compare as compare_job
from jobs import evaluate as evaluate_job
from jobs.make_data import main as make_data
from rlhf_cluster.cli import dump_yaml
from rlhf_cluster.config import DataConfig, ModelsConfig, OptimConfig, RewardTrainConfig, TrainRMConfig
from rlhf_cluster.data import read_split
from rlhf_cluster.metrics import accuracy_by_subset, mean_ci95
from rlhf_cluster.models import load_reward_model, load_tokenizer
from rlhf_cluster.reward_model import conditioning_texts

TEST_SPLITS = ["test_seen_users", "test_unseen_users", "pets_ood"]  # pets: no test_unseen_topics


def write_config(
    run: Path, data: Path, conditioning: str = "context", seed: int = 0, lr: float = 1e-4, models: Path = Path("models")
) -> TrainRMConfig:
    cfg = TrainRMConfig(
        run_dir=str(run),
        seed=seed,
        data=DataConfig(dir=str(data)),
        models=ModelsConfig(reward_model=str(models / "reward_model"), summarizer=str(models / "summarizer")),
        rm=RewardTrainConfig(conditioning=conditioning, optim=OptimConfig(lr=lr)),
    )
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(dump_yaml(cfg))
    return cfg


def make_run(run: Path, data: Path, models: Path, conditioning: str = "context") -> Path:
    """A run dir with an untrained scalar head saved as best/, as jobs.train_rm writes it."""
    write_config(run, data, conditioning, models=models)
    tokenizer = load_tokenizer(models / "reward_model")
    torch.manual_seed(0)
    model = load_reward_model(models / "reward_model", pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(run / "best")
    tokenizer.save_pretrained(run / "best")
    (run / "best.json").write_text(json.dumps({"step": 7, "validation_accuracy": 0.5}))
    return run


def recompute(run: Path, data: Path, split: str, summaries=None, batch_size: int = 64) -> dict:
    """Accuracy by subset straight from the library calls, without the job."""
    cfg = TrainRMConfig.model_validate(yaml.safe_load((run / "config.yaml").read_text()))
    examples = read_split(data, split)
    cond = conditioning_texts(examples, cfg.rm.conditioning, summaries, cfg.rm.max_context_pairs)
    tokenizer = load_tokenizer(run / "best")
    model = load_reward_model(run / "best", pad_token_id=tokenizer.pad_token_id)
    rc, rr, _ = evaluate_job.score_pairs(model, tokenizer, examples, cond, cfg.rm, batch_size, "cpu")
    return accuracy_by_subset(rc, rr, examples.column("contested").to_pylist())


@pytest.fixture(scope="module")
def run_dir(tiny_models, tiny_data, tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("runs") / "ctx", tiny_data, tiny_models)


@pytest.fixture(scope="module")
def evaluated(run_dir) -> dict:
    return evaluate_job.main(["--run", str(run_dir)])


# ---------------------------------------------------------------------------------- evaluate


def test_evaluate_writes_documented_eval_json(run_dir, tiny_data, evaluated):
    saved = json.loads((run_dir / "eval.json").read_text())
    assert saved == json.loads(json.dumps(evaluated))
    assert saved["splits"] == TEST_SPLITS  # train and validation are never evaluated
    for split in TEST_SPLITS:
        acc = saved["accuracy"][split]
        assert {"all", "contested", "agreed", "n"} <= set(acc)
        assert all(0.0 <= acc[k] <= 1.0 for k in ("all", "contested", "agreed"))
        assert acc["n"] == read_split(tiny_data, split).num_rows == acc["n_contested"] + acc["n_agreed"]
        assert 0.0 <= saved["per_user"][split]["worst_decile"] <= saved["per_user"][split]["mean"] <= 1.0
    assert saved["ceilings"] == json.loads((tiny_data / "ceilings.json").read_text())
    assert saved["checkpoint"]["name"] == "best" and saved["checkpoint"]["step"] == 7
    md = (run_dir / "eval.md").read_text()
    assert "| split | subset | n | accuracy | oracle | user-agnostic | n-context Bayes |" in md


def test_evaluate_numbers_equal_direct_recomputation(run_dir, tiny_data, evaluated):
    split = "test_seen_users"
    expected = recompute(run_dir, tiny_data, split)
    assert evaluated["accuracy"][split] == expected


def test_evaluate_other_dataset_writes_eval_name_json(run_dir, tmp_path, evaluated):
    personas = tmp_path / "personas"
    make_data(
        [
            "--dataset",
            "personas",
            "--out",
            str(personas),
            "personas.n_train_users=4",
            "personas.n_test_users=4",
            "personas.examples_per_user=2",
            "personas.n_context=2",
        ]
    )
    before = (run_dir / "eval.json").read_text()
    result = evaluate_job.main(["--run", str(run_dir), "--data", str(personas), "--splits", "[test_unseen_topics]"])
    assert (run_dir / "eval-personas.json").is_file() and (run_dir / "eval-personas.md").is_file()
    assert (run_dir / "eval.json").read_text() == before  # the run's own evaluation is untouched
    assert result["ceilings"] == json.loads((personas / "ceilings.json").read_text())
    assert result["accuracy"]["test_unseen_topics"] == recompute(run_dir, personas, "test_unseen_topics")


def test_evaluate_own_data_without_ceilings(run_dir, tiny_data, tmp_path):
    mine = tmp_path / "mydata"
    mine.mkdir()
    shutil.copy(tiny_data / "test_unseen_users.parquet", mine / "test.parquet")
    result = evaluate_job.main(["--run", str(run_dir), "--data", str(mine)])
    assert result["splits"] == ["test"] and result["ceilings"] is None
    assert "| test | contested |" in (run_dir / "eval-mydata.md").read_text()


def test_evaluate_summary_conditioning_reads_cached_summaries(tiny_models, tiny_data, tmp_path, monkeypatch):
    run = make_run(tmp_path / "summary", tiny_data, tiny_models, conditioning="summary")
    split = "test_unseen_users"
    examples = read_split(tiny_data, split)
    users = examples.column("user_id").to_pylist()
    summaries = [f"user {u} likes quiet pets" for u in users]
    (run / "summaries").mkdir()
    pq.write_table(
        pa.table({"user_id": users, "row": list(range(len(users))), "summary": summaries}),
        run / "summaries" / f"{split}.parquet",
    )
    monkeypatch.setattr("actors.rollout.summarize_examples", _must_not_run, raising=False)
    result = evaluate_job.main(["--run", str(run), "--splits", f"[{split}]"])
    assert result["accuracy"][split] == recompute(run, tiny_data, split, summaries)
    # each user's own summary names them: nothing about their ground truth is left open
    info = result["summary_information"][split]
    n_users = len(set(users))
    assert info["n_users"] == info["distinct_summaries"] == n_users
    assert info["conditional_entropy_bits"] == 0.0 and info["majority_share"] == 1.0
    assert info["truth_entropy_bits"] > 0.5  # pets' user types, not all alike
    assert f"| {split} | {n_users} | {n_users} |" in (run / "eval.md").read_text()


def test_evaluate_summary_conditioning_summarizes_and_caches(tiny_models, tiny_data, tmp_path, monkeypatch):
    run = make_run(tmp_path / "summary", tiny_data, tiny_models, conditioning="summary")
    calls = []

    def fake_summarize(examples, models, rollout, resources, ray_cfg, seed):
        calls.append((examples.num_rows, models.summarizer, rollout.temperature, seed))
        return [f"summary of {u}" for u in examples.column("user_id").to_pylist()]

    monkeypatch.setattr("actors.rollout.summarize_examples", fake_summarize, raising=False)
    args = ["--run", str(run), "--splits", "[pets_ood]"]
    evaluate_job.main(args)
    cache = pq.read_table(run / "summaries" / "pets_ood.parquet").to_pylist()
    assert calls == [(len(cache), str(tiny_models / "summarizer"), 0.0, 0)]  # the run's greedy summarizer
    assert cache[3] == {"user_id": cache[3]["user_id"], "row": 3, "summary": f"summary of {cache[3]['user_id']}"}
    evaluate_job.main(args)
    assert len(calls) == 1  # second evaluation reads the cache


def _must_not_run(*args, **kwargs):
    raise AssertionError("summaries were cached: the summarizer must not run")


def test_evaluate_data_with_only_train_and_validation_says_what_to_do(run_dir, tiny_data, tmp_path, capsys):
    mine = tmp_path / "mydata"
    mine.mkdir()
    for split in ("train", "validation"):
        shutil.copy(tiny_data / f"{split}.parquet", mine / f"{split}.parquet")
    with pytest.raises(SystemExit) as exc:
        evaluate_job.main(["--run", str(run_dir), "--data", str(mine)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "no test split" in err and "--splits '[validation]'" in err


@pytest.mark.parametrize("case", ["no_dir", "no_config", "no_checkpoint"])
def test_evaluate_bad_run_dir_exits_2(case, tmp_path, tiny_data, capsys):
    run = tmp_path / "run"
    if case != "no_dir":
        run.mkdir()
    if case == "no_checkpoint":
        write_config(run, tiny_data)
    with pytest.raises(SystemExit) as exc:
        evaluate_job.main(["--run", str(run)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert str(run) in err
    assert {"no_dir": "does not exist", "no_config": "config.yaml", "no_checkpoint": "last"}[case] in err


def test_evaluate_help_says_where_data_results_go(capsys):
    with pytest.raises(SystemExit) as exc:
        evaluate_job.main(["--help"])
    assert exc.value.code == 0 and "eval-<data dir name>.json" in capsys.readouterr().out


# ----------------------------------------------------------------------------------- compare


def fake_eval(run: Path, data: Path, conditioning: str, seed: int, contested: float, lr: float = 1e-4) -> Path:
    write_config(run, data, conditioning, seed, lr)
    acc = {"all": 0.8, "contested": contested, "agreed": 0.9, "n": 10, "n_contested": 5, "n_agreed": 5}
    ev = {
        "accuracy": {"test_seen_users": acc},
        "per_user": {"test_seen_users": {"mean": 0.8, "worst_decile": 0.5}},
        "ceilings": json.loads((data / "ceilings.json").read_text()),
    }
    (run / "eval.json").write_text(json.dumps(ev))
    return run


def test_compare_aggregates_seeds_with_ci(tiny_data, tmp_path):
    runs = tmp_path / "runs"
    fake_eval(runs / "pets-summary-s0", tiny_data, "summary", 0, 0.6)
    fake_eval(runs / "pets-summary-s1", tiny_data, "summary", 1, 0.8)
    fake_eval(runs / "pets-bt-s0", tiny_data, "bt", 0, 0.5)
    out = tmp_path / "cmp"
    result = compare_job.main(["--runs", str(runs / "pets-*"), "--out", str(out)])
    groups = {g["label"]: g for g in result["groups"]}
    assert set(groups) == {"bt", "summary"} and sorted(groups["summary"]["seeds"]) == [0, 1]
    stat = groups["summary"]["accuracy"]["test_seen_users"]["contested"]
    # mean 0.7; half width t(0.975, 1) · s / √2 with s = 0.1·√2 → 12.706 · 0.1
    assert stat["mean"] == pytest.approx(0.7) and stat["ci95"] == pytest.approx(1.2706, abs=1e-3)
    assert (stat["mean"], stat["ci95"]) == mean_ci95([0.6, 0.8])
    md = (out / "compare.md").read_text()
    assert "| summary | 0.800 ± 0.000 (2 seeds) | 0.700 ± 1.271 (2 seeds) |" in md
    assert "| bt | 0.800 (1 seed) | 0.500 (1 seed) |" in md
    assert "| *ceiling: user-agnostic* |" in md and "| *ceiling: n-context Bayes* |" in md
    assert json.loads((out / "compare.json").read_text())["groups"][0]["accuracy"]
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_labels_groups_that_differ_in_more_than_seed(tiny_data, tmp_path):
    a = fake_eval(tmp_path / "a", tiny_data, "summary", 0, 0.6, lr=1e-4)
    b = fake_eval(tmp_path / "b", tiny_data, "summary", 0, 0.7, lr=1e-3)
    result = compare_job.main(["--runs", f"[{a}, {b}]", "--out", str(tmp_path / "cmp")])
    assert [g["label"] for g in result["groups"]] == ["summary (rm.optim.lr=0.0001)", "summary (rm.optim.lr=0.001)"]


@pytest.mark.parametrize("case", ["no_eval", "no_dir", "no_match"])
def test_compare_bad_inputs_exit_2(case, tiny_data, tmp_path, capsys):
    good = fake_eval(tmp_path / "good", tiny_data, "bt", 0, 0.5)
    bad = {"no_eval": tmp_path / "noeval", "no_dir": tmp_path / "missing", "no_match": tmp_path / "zz-*"}[case]
    if case == "no_eval":
        write_config(bad, tiny_data)
    with pytest.raises(SystemExit) as exc:
        compare_job.main(["--runs", f"[{good}, {bad}]", "--out", str(tmp_path / "cmp")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert str(bad) in err
    if case == "no_eval":
        assert "no eval.json" in err and "jobs.evaluate --run" in err
