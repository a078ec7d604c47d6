"""DeepSpeed worker group + reward-model ranks on real local Ray, real DeepSpeed on CPU (gloo).

Invariance: 1 rank vs 2 ranks on the same global batches give the same losses and weights (ZeRO 0, 2, 3),
and the 2 ranks hold identical weights. I/O: score order, save → load, save → transformers. Failures:
bad batches, a diverging run and NaN weights stop with an error naming the step, before any update.
The helpers (splitting, config, atomic write, metric combination) are tested without Ray first.
"""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from rlhf_cluster.config import ActorResources, DeepSpeedConfig, OptimConfig, RewardTrainConfig
from rlhf_cluster.distributed import (
    NonFiniteLossError,
    choose_backend,
    deepspeed_config,
    warmup_factor,
    write_dir_atomically,
)
from rlhf_cluster.reward_model import conditioning_texts, encode_pairs, pair_table, sequence_rewards
from rlhf_cluster.schema import REWARD_SCORE_SCHEMA, BatchError
from rlhf_cluster.worker_group import port_was_taken, split_even, split_near_even

RANK = ActorResources(num_cpus=0.5)  # 2 ranks of one group + 2 of another fit on the 2-CPU test Ray
BATCH, STEPS, LR = 8, 3, 3e-3
PARAM_ATOL = 1e-4  # observed max |Δw| 1 vs 2 ranks after 3 steps: ~2e-5 (ZeRO 0/2), ~4e-5 (ZeRO 3)


# ------------------------------------------------------------------------------ helpers, no Ray


def _table(n: int) -> pa.Table:
    return pa.table({"i": list(range(n))})


def test_split_even_keeps_order_and_names_sizes():
    shards = split_even(_table(6), 2, "where")
    assert [s.column("i").to_pylist() for s in shards] == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(BatchError, match="where: 7 rows do not split evenly over 2 ranks"):
        split_even(_table(7), 2, "where")


def test_split_near_even_covers_every_row_in_order():
    assert [s.num_rows for s in split_near_even(_table(7), 3)] == [3, 2, 2]
    assert [s.num_rows for s in split_near_even(_table(1), 2)] == [1, 0]
    assert pa.concat_tables(split_near_even(_table(7), 3)).column("i").to_pylist() == list(range(7))


def test_deepspeed_config_and_schedule():
    cfg = deepspeed_config(DeepSpeedConfig(zero_stage=3), OptimConfig(lr=1e-3, grad_clip=0.5), 8, 2)
    assert cfg["train_batch_size"] == 8 and cfg["train_micro_batch_size_per_gpu"] == 4
    assert cfg["zero_optimization"] == {"stage": 3} and cfg["gradient_clipping"] == 0.5
    assert cfg["optimizer"]["type"] == "AdamW" and cfg["optimizer"]["params"]["torch_adam"] is True
    with pytest.raises(ValueError, match="8 is not divisible by 3 ranks"):
        deepspeed_config(DeepSpeedConfig(), OptimConfig(), 8, 3)
    assert [warmup_factor(4)(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(0)(0) == 1.0


def test_backend_choice():
    assert choose_backend("auto", gpu=False) == "gloo" and choose_backend("auto", gpu=True) == "nccl"
    with pytest.raises(ValueError, match="nccl needs a GPU"):
        choose_backend("nccl", gpu=False)


def test_write_dir_atomically_replaces_or_leaves_nothing(tmp_path):
    target = tmp_path / "ckpt"
    write_dir_atomically(target, lambda d: (d / "a").write_text("1"))
    write_dir_atomically(target, lambda d: (d / "b").write_text("2"))  # replaces the old directory
    assert sorted(p.name for p in target.iterdir()) == ["b"]

    def fail(d: Path) -> None:
        (d / "half").write_text("x")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_dir_atomically(target, fail)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp dir left
    assert sorted(p.name for p in target.iterdir()) == ["b"]  # the previous checkpoint is intact


def test_port_was_taken_reads_torchs_error():
    assert port_was_taken(
        RuntimeError("DistNetworkError: ... port: 45879, code: -98, name: EADDRINUSE, message: address already in use")
    )
    assert port_was_taken(OSError("[Errno 98] Address already in use"))
    assert not port_was_taken(RuntimeError("Connection refused"))


def test_combine_metrics():
    from rlhf_cluster.worker_group import combine_metrics

    per_rank = [
        {"loss": 0.5, "accuracy": 1.0, "n_pairs": 4, "n_truncated": 1, "seconds": 0.2},
        {"loss": 0.5, "accuracy": 0.5, "n_pairs": 4, "n_truncated": 0, "seconds": 0.3},
    ]
    assert combine_metrics(per_rank) == {"loss": 0.5, "accuracy": 0.75, "n_pairs": 8, "n_truncated": 1, "seconds": 0.3}


# ------------------------------------------------------------------------- Ray + DeepSpeed fixtures


@pytest.fixture(scope="module")
def pairs(tiny_data) -> pa.Table:
    ex = pq.read_table(tiny_data / "train.parquet")
    table = pair_table(ex, conditioning_texts(ex, "context", max_context_pairs=1))
    assert table.num_rows >= BATCH * STEPS
    return table


@pytest.fixture(scope="module")
def backbone(tiny_models) -> str:
    return str(tiny_models / "reward_model")


def _rm(**optim) -> RewardTrainConfig:
    return RewardTrainConfig(
        batch_size=BATCH, max_length=256, optim=OptimConfig(**{"lr": LR, "warmup_steps": 2, **optim})
    )


def _group(backbone: str, ranks: int, stage: int = 2, rm: RewardTrainConfig | None = None):
    from actors.reward_model import RewardModelGroup

    return RewardModelGroup(backbone, rm or _rm(), DeepSpeedConfig(num_ranks=ranks, zero_stage=stage), RANK, seed=0)


def _train(group, pairs: pa.Table) -> list[dict]:
    return [group.train_step(pairs.slice(BATCH * i, BATCH)) for i in range(STEPS)]


def _saved_weights(group, path: Path) -> dict[str, torch.Tensor]:
    group.save(str(path))
    return load_file(str(path / "model.safetensors"))


@pytest.fixture(scope="module")
def reference(ray_local, backbone, pairs, tmp_path_factory):
    """One rank, ZeRO-2: the per-step metrics and final weights every other world size must reproduce."""
    with _group(backbone, ranks=1) as g:
        metrics = _train(g, pairs)
        weights = _saved_weights(g, tmp_path_factory.mktemp("reference") / "ckpt")
    return metrics, weights


@pytest.fixture(scope="module")
def trained(ray_local, backbone, pairs):
    """Two ranks, ZeRO-2, trained like the reference; kept for the I/O tests."""
    g = _group(backbone, ranks=2)
    metrics = _train(g, pairs)
    yield g, metrics
    g.shutdown()


def _assert_matches_reference(reference, metrics, weights, checksums):
    ref_metrics, ref_weights = reference
    assert checksums[0] == checksums[1]  # data-parallel ranks hold bit-identical weights
    for ref, got in zip(ref_metrics, metrics):
        assert got["loss"] == pytest.approx(ref["loss"], rel=1e-5)
        assert got["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-4)
        assert got["accuracy"] == ref["accuracy"] and got["lr"] == ref["lr"] and got["n_pairs"] == BATCH
    assert weights.keys() == ref_weights.keys() and "score.weight" in weights
    diff = max((weights[k] - ref_weights[k]).abs().max().item() for k in weights)
    assert diff < PARAM_ATOL, f"max |w(2 ranks) - w(1 rank)| = {diff:.2e}"


# --------------------------------------------------------------------------------------- invariance


@pytest.mark.slow
def test_two_ranks_match_one_rank_zero2(reference, trained, tmp_path):
    group, metrics = trained
    assert [m["lr"] for m in metrics] == [LR / 2, LR, LR]  # linear warmup over 2 steps
    weights = _saved_weights(group, tmp_path / "ckpt")
    _assert_matches_reference(reference, metrics, weights, group.parameter_checksums())


@pytest.mark.slow
@pytest.mark.parametrize("stage", [0, 3])
def test_two_ranks_match_one_rank_other_zero_stages(reference, backbone, pairs, tmp_path, stage):
    with _group(backbone, ranks=2, stage=stage) as g:
        metrics = _train(g, pairs)
        _assert_matches_reference(reference, metrics, _saved_weights(g, tmp_path / "ckpt"), g.parameter_checksums())


# ---------------------------------------------------------------------------------------- scoring, I/O


@pytest.mark.slow
def test_score_keeps_input_order(trained, pairs):
    group, _ = trained
    batch = pairs.slice(0, 7)  # 4 + 3 rows over 2 ranks
    scores = group.score(batch)
    assert scores.schema.equals(REWARD_SCORE_SCHEMA, check_metadata=False) and scores.num_rows == 7
    assert scores.column("user_id").to_pylist() == batch.column("user_id").to_pylist()
    reversed_scores = group.score(batch.take(list(range(6, -1, -1))))
    for col in ("r_chosen", "r_rejected"):
        assert reversed_scores.column(col).to_pylist()[::-1] == pytest.approx(scores.column(col).to_pylist(), abs=1e-5)
    one = group.score(batch.slice(2, 1))  # fewer rows than ranks: rank 1 scores a stand-in, dropped
    assert one.num_rows == 1 and one.column("r_chosen")[0].as_py() == pytest.approx(
        scores.column("r_chosen")[2].as_py(), abs=1e-5
    )


@pytest.mark.slow
def test_save_load_into_fresh_group_and_transformers(trained, backbone, pairs, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    group, _ = trained
    path = tmp_path / "rm"
    group.save(str(path))
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in path.iterdir()}
    assert [p.name for p in tmp_path.iterdir()] == ["rm"]  # no temp dir left behind
    batch = pairs.slice(BATCH * STEPS, 6)  # rows not trained on
    expected = group.score(batch)

    with _group(backbone, ranks=1) as fresh:
        before = fresh.score(batch)
        fresh.load(str(path))
        after = fresh.score(batch)
    assert before.column("r_chosen").to_pylist() != pytest.approx(expected.column("r_chosen").to_pylist(), abs=1e-3)
    for col in ("r_chosen", "r_rejected"):
        assert after.column(col).to_pylist() == pytest.approx(expected.column(col).to_pylist(), abs=1e-5)

    model = AutoModelForSequenceClassification.from_pretrained(str(path)).eval()
    tok = AutoTokenizer.from_pretrained(str(path))
    enc = encode_pairs(tok, batch, max_length=256)
    with torch.no_grad():
        r = sequence_rewards(model, enc.input_ids, enc.attention_mask)
    assert model.config.num_labels == 1
    assert r[:6].tolist() == pytest.approx(expected.column("r_chosen").to_pylist(), abs=1e-5)
    assert r[6:].tolist() == pytest.approx(expected.column("r_rejected").to_pylist(), abs=1e-5)


@pytest.mark.slow
def test_training_state_resumes_exactly(ray_local, backbone, pairs, tmp_path):
    """save_state after step 1 → a fresh 2-rank group (ZeRO-2: each rank's optimizer partition) that
    load_state's it takes steps 2 and 3 exactly as the uninterrupted group did; an HF-only load does not."""
    rm = _rm(warmup_steps=3)  # the LR schedule position matters too
    with _group(backbone, ranks=2, rm=rm) as g:
        first = g.train_step(pairs.slice(0, BATCH))
        g.save_state(str(tmp_path / "state"), "step1")
        g.save(str(tmp_path / "hf1"))
        rest = [g.train_step(pairs.slice(BATCH * i, BATCH)) for i in (1, 2)]
    with _group(backbone, ranks=2, rm=rm) as fresh:
        assert fresh.load_state(str(tmp_path / "state"), "step1") == 1
        resumed = [fresh.train_step(pairs.slice(BATCH * i, BATCH)) for i in (1, 2)]
        fresh.load(str(tmp_path / "hf1"))  # weights only: Adam moments and the LR step start over
        weights_only = fresh.train_step(pairs.slice(BATCH, BATCH))
    assert first["lr"] < rest[0]["lr"] < rest[1]["lr"]
    for want, got in zip(rest, resumed):
        assert (got["loss"], got["grad_norm"], got["lr"]) == (want["loss"], want["grad_norm"], want["lr"])
    assert weights_only["lr"] != rest[0]["lr"]
    with pytest.raises(Exception, match="no DeepSpeed checkpoint|not found|No such file"):
        with _group(backbone, ranks=1, rm=rm) as other:
            other.load_state(str(tmp_path / "state"), "missing")


@pytest.mark.slow
def test_bad_batches_are_clear_errors(trained, pairs):
    group, _ = trained
    with pytest.raises(BatchError, match=r"train_step: batch schema mismatch \(missing \['rejected'\]"):
        group.train_step(pairs.slice(0, BATCH).drop_columns(["rejected"]))
    with pytest.raises(BatchError, match="train_step: the batch has no rows"):
        group.train_step(pairs.slice(0, 0))
    with pytest.raises(BatchError, match="score: the batch has no rows"):
        group.score(pairs.slice(0, 0))
    with pytest.raises(BatchError, match="7 rows do not split evenly over 2 ranks"):
        group.train_step(pairs.slice(0, 7))
    assert group.score(pairs.slice(0, 2)).num_rows == 2  # the group is still usable


# ------------------------------------------------------------------------------------- non-finite


@pytest.mark.slow
def test_diverging_run_stops_at_the_step_before_updating(ray_local, backbone, pairs):
    # lr 1e30 without clipping: step 1 is finite and throws the weights to ~1e30; step 2's loss is not finite.
    with _group(backbone, ranks=2, rm=_rm(lr=1e30, grad_clip=0.0, warmup_steps=0)) as g:
        assert math.isfinite(g.train_step(pairs.slice(0, BATCH))["loss"])
        before = g.parameter_checksums()
        with pytest.raises(NonFiniteLossError, match=r"non-finite loss \((nan|inf)\) at step 2"):
            g.train_step(pairs.slice(BATCH, BATCH))
        assert g.parameter_checksums() == before  # both ranks raised before backward: nothing moved


@pytest.mark.slow
def test_group_starts_again_when_its_rendezvous_port_was_taken(ray_local, backbone, monkeypatch, capsys):
    """The race CI once hit: the port is free when chosen and taken before rank 0 listens on it."""
    import socket

    import rlhf_cluster.worker_group as wg

    real, ports = wg.rendezvous_address, []
    with socket.socket() as held:  # another process's server on the port the group is handed first
        held.bind(("", 0))
        held.listen()
        busy = held.getsockname()[1]

        def first_taken(strategy):
            addr, port = real(strategy)
            ports.append(port if ports else busy)
            return addr, ports[-1]

        monkeypatch.setattr(wg, "rendezvous_address", first_taken)
        with _group(backbone, ranks=1) as g:
            assert len(g.parameter_checksums()) == 1
    assert ports[0] == busy and len(ports) == 2 and ports[1] != busy
    assert "rendezvous port was taken" in capsys.readouterr().out


def test_nan_weights_stop_training_and_are_never_saved(ray_local, backbone, pairs, tmp_path):
    from rlhf_cluster.models import load_reward_model, load_tokenizer, save_checkpoint

    tok = load_tokenizer(backbone)
    model = load_reward_model(backbone, pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        model.score.weight.fill_(float("nan"))
    save_checkpoint(model, tok, tmp_path / "nan_rm")
    out = tmp_path / "out"
    with _group(str(tmp_path / "nan_rm"), ranks=1) as g:
        with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(nan\) at step 1"):
            g.train_step(pairs.slice(0, BATCH))
        with pytest.raises(NonFiniteLossError, match="refusing to save .* non-finite weights .*score.weight"):
            g.save(str(out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan_rm"]  # neither out/ nor a temp dir
