"""RLUF's P[Love] (jobs.train_love, actors/love_model.py, rlhf_cluster/love.py): reading reaction logs,
conditioning, the job on local Ray, and its config and data errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, run_job

from rlhf_cluster import love
from rlhf_cluster.schema import LOVE_BATCH_SCHEMA, REACTION_SCHEMA, RESPONSE_SCHEMA


def _logs(tmp_path, **columns):
    base = {"user_id": ["u1", "u1", "u2"], "prompt": ["p"] * 3, "response": ["a", "b", "c"]}
    base["reaction"] = ["love", "none", "none"]
    pq.write_table(pa.table({**base, **columns}), tmp_path / "train.parquet")
    return tmp_path


def test_reaction_logs_are_read_into_the_schema_and_bad_rows_are_named(tmp_path):
    t = love.read_reactions(_logs(tmp_path), "train")
    assert t.schema.equals(REACTION_SCHEMA, check_metadata=False) and t.column("context").null_count == 3
    assert list(love.labels(t)) == [True, False, False]
    assert love.first_row_per_user(t).column("response").to_pylist() == ["a", "c"]
    with pytest.raises(love.ReactionDataError, match=r"row 2 has reaction 'like'.*expected 'love' or 'none'"):
        love.read_reactions(_logs(tmp_path, reaction=["love", "none", "like"]), "train")
    pq.write_table(pa.table({"user_id": ["u"], "prompt": ["p"]}), tmp_path / "bad.parquet")
    with pytest.raises(love.ReactionDataError, match=r"missing column\(s\) \['response', 'reaction'\]"):
        love.read_reactions(tmp_path, "bad")
    with pytest.raises(love.ReactionDataError, match="no such split"):
        love.read_reactions(tmp_path, "test")


def test_conditioning_batches_and_positive_weight(tmp_path):
    t = love.read_reactions(_logs(tmp_path, user_description=["likes dogs", "likes dogs", None]), "train")
    with pytest.raises(love.ReactionDataError, match=r"oracle needs user_description.*row 2 \(user 'u2'\)"):
        love.conditioning_texts(t, "oracle")
    assert love.conditioning_texts(t, "summary", {"u1": "s1", "u2": "s2"}) == ["s1", "s1", "s2"]
    assert love.conditioning_texts(t, "none") == [None] * 3
    batch = love.love_batch(t, ["s1", "s1", "s2"])
    assert batch.schema.equals(LOVE_BATCH_SCHEMA) and batch.column("label").to_pylist() == [1.0, 0.0, 0.0]
    assert love.love_batch(t, [None] * 3, with_labels=False).schema.equals(RESPONSE_SCHEMA)
    assert love.resolve_positive_weight("balanced", np.array([True, False, False])) == 2.0
    assert love.resolve_positive_weight(3, np.array([True])) == 3.0
    with pytest.raises(love.ReactionDataError, match="no Love"):
        love.resolve_positive_weight("balanced", np.array([False]))


@pytest.mark.slow
def test_train_love_reports_auc_and_calibration_beside_bayes(tiny_data, tiny_models, tmp_path):
    logs = tmp_path / "reactions"
    run_job("jobs.make_reactions", "--data", str(tiny_data), "--out", str(logs), "reactions.impressions_per_user=24",
            "reactions.base_rate=0.2")  # fmt: skip
    run = tmp_path / "love"
    proc = run_job(
        "jobs.train_love", f"data={logs}", f"models.reward_model={tiny_models / 'reward_model'}", f"run_dir={run}",
        "love.conditioning=oracle", "love.positive_weight=balanced", "love.steps=6", "love.eval_every=3",
        "love.batch_size=16", "love.max_length=256", "deepspeed.num_ranks=1", "ray.num_cpus=2",
    )  # fmt: skip
    result = json.loads((run / "eval.json").read_text())
    assert result["best"]["step"] in (3, 6) and (run / "best" / "config.json").is_file()
    bayes = json.loads((logs / "reactions.json").read_text())["splits"]
    assert sorted(result["splits"]) == sorted(bayes)
    for split, r in result["splits"].items():
        assert r["n"] == bayes[split]["impressions"] and r["n_love"] == bayes[split]["loves"]
        assert 0 <= r["auc"] <= 1 and math.isfinite(r["log_loss"]) and 0 <= r["ece"] <= 1
        assert r["bayes"]["knowledge"] == "type_known" and r["bayes"]["auc"] == bayes[split]["type_known"]["auc"]
        assert sum(b["n"] for b in r["reliability"]) == r["n"]
    # prior correction keeps the predicted rate near the true one though positives weigh 4×
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["positive_weight"] > 2
    train = result["splits"]["train"]
    assert abs(train["predicted_love_rate"] - train["love_rate"]) < 0.1, train
    assert (run / "reliability.png").stat().st_size > 1000 and "ECE" in proc.stdout
    events = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["split"] == "validation"] == [3, 6]


@pytest.mark.parametrize(
    "args, message",
    [
        (["love.conditioning=summary"], "love.conditioning=summary needs models.summarizer"),
        (["love.positive_weight=0"], "love.positive_weight must be > 0"),
        (["love.positive_weight=heavy"], "positive_weight"),
        (["love.batch_size=3", "deepspeed.num_ranks=2"], "divisible by deepspeed.num_ranks"),
    ],
)
def test_train_love_config_errors_exit_2(tmp_path, args, message):
    cmd = [sys.executable, "-m", "jobs.train_love", f"data={tmp_path}", "models.reward_model=x", *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
