"""Validation accuracy against steps, side by side, and where each curve saturates: pick a step budget.

    python -m jobs.train_rm --config configs/rm_pets.yaml data.dir=MY_DATA rm.conditioning=bt \\
        rm.steps=3000 rm.eval_every=100 run_dir=runs/curve-bt        # and rm.conditioning=oracle, context …
    python -m jobs.curve --runs 'runs/curve-*'

Reads each run's metrics.jsonl (jobs.train_rm: steps; jobs.plus: iterations) and prints one table — a row
per validated step, a column per run — then, per run, its best value and the first step within ``tol`` of
it (``rlhf_cluster.metrics.saturation``). A curve whose best is its last point is still improving: give
that run more steps. Nothing is trained or written.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from rlhf_cluster.cli import EXIT_USAGE, parse_config
from rlhf_cluster.config import CurveConfig
from rlhf_cluster.metrics import read_metrics, saturation
from rlhf_cluster.runs import expand_run_dirs


def run_name(run_dir: Path) -> str:
    """A column name: the config's name, else the conditioning (train_rm) or "PLUS", then the directory."""
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").is_file() else {}
    cfg = cfg if isinstance(cfg, dict) else {}
    kind = cfg.get("name") or ("PLUS" if "policy" in cfg else (cfg.get("rm") or {}).get("conditioning", "?"))
    return f"{kind} ({run_dir.name})"


def curves(cfg: CurveConfig) -> dict[str, dict[int, float | None]]:
    """{run name: {step: validation metric}}; a run without metrics.jsonl or the metric is an error."""
    out: dict[str, dict[int, float | None]] = {}
    for run_dir in expand_run_dirs(cfg.runs):
        if not (run_dir / "metrics.jsonl").is_file():
            raise ValueError(f"{run_dir}: no metrics.jsonl (not a jobs.train_rm / jobs.plus run directory?)")
        records = read_metrics(run_dir, "validation")
        if not records or all(cfg.metric not in r for r in records):
            known = sorted({k for r in records for k in r} - {"step", "split", "time"})
            raise ValueError(f"{run_dir}: no validation metric {cfg.metric!r}; logged: {', '.join(known) or 'none'}")
        out[run_name(run_dir)] = {r["step"]: r.get(cfg.metric) for r in records}
    return out


def table(data: dict[str, dict[int, float | None]]) -> list[str]:
    steps = sorted({s for curve in data.values() for s in curve})
    names = list(data)
    width = max(10, *(len(n) for n in names))
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [f"{'step':>8}  " + "  ".join(f"{n:>{width}}" for n in names)]
    lines += [f"{s:>8}  " + "  ".join(f"{fmt(data[n].get(s)):>{width}}" for n in names) for s in steps]
    return lines


def verdicts(data: dict[str, dict[int, float | None]], tol: float) -> list[str]:
    lines = []
    for name, curve in data.items():
        sat = saturation(list(curve), list(curve.values()), tol)
        if sat["best"] is None:
            lines.append(f"{name}: no value logged")
            continue
        line = f"{name}: best {sat['best']:.3f} at step {sat['best_step']}; within {tol} of it from step "
        line += f"{sat['saturated_at']}"
        if sat["improving_at_end"] and len(curve) > 1:
            line += " — still improving at the last step: more steps may help"
        lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(CurveConfig, argv, prog="jobs.curve")
    try:
        data = curves(cfg)
    except ValueError as err:
        print(f"jobs.curve: {err}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    print(f"validation {cfg.metric} against steps")
    print("\n".join(table(data)))
    print("\n".join(verdicts(data, cfg.tol)))
    return data


if __name__ == "__main__":
    main()
