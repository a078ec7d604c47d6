"""Training checkpoints of an RL job: every DeepSpeed group's state plus the driver's state, for exact resume.

``run_dir/checkpoint/<role>/iter<k>/`` holds each group's DeepSpeed checkpoint (weights, Adam moments,
LR schedule, step, RNG: ``DeepSpeedRank.save_state``); ``run_dir/checkpoint/state.json`` the driver's
state (iteration, weight version, best, timings …). state.json is written last and atomically and names
the complete tag, so a crash at any point leaves it pointing at a complete checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def save_checkpoint(run_dir: Path, iteration: int, groups: dict, driver: dict) -> None:
    """Each group's state under <role>/iter<k>, then state.json (atomically, last), then older tags removed."""
    ckpt, tag = run_dir / "checkpoint", f"iter{iteration:06d}"
    for role, group in groups.items():
        group.save_state(str(ckpt / role), tag)
    tmp = ckpt / "state.json.tmp"
    tmp.write_text(json.dumps({**driver, "iteration": iteration, "tag": tag}, indent=2))
    tmp.replace(ckpt / "state.json")
    for role in groups:
        for old in (ckpt / role).glob("iter*"):
            if old.is_dir() and old.name != tag:
                shutil.rmtree(old, ignore_errors=True)


def read_checkpoint(run_dir: Path, iterations: int, checkpoint_every: int, must_match: dict) -> dict:
    """The driver state of run_dir/checkpoint/state.json. Exits with a message when there is none, when
    a setting in ``must_match`` (e.g. num_ranks, algorithm) differs from the checkpoint's, or when the
    checkpoint is already at ``iterations``."""
    path = run_dir / "checkpoint" / "state.json"
    if not path.is_file():
        raise SystemExit(
            f"--resume {run_dir}: no checkpoint ({path} missing); the run stopped before its "
            f"first checkpoint (checkpoint_every={checkpoint_every})"
        )
    state = json.loads(path.read_text())
    for key, now in must_match.items():
        if state[key] != now:
            raise SystemExit(f"--resume {run_dir}: checkpoint has {key}={state[key]!r}, config says {now!r}")
    if state["iteration"] >= iterations:
        raise SystemExit(
            f"--resume {run_dir}: the checkpoint is at iteration {state['iteration']}, the run has "
            f"iterations={iterations}; raise iterations (e.g. iterations={2 * iterations}) to go on"
        )
    return state


def restore_groups(run_dir: Path, groups: dict, state: dict) -> None:
    """Load every group's state of the checkpoint ``state`` names."""
    for role, group in groups.items():
        group.load_state(str(run_dir / "checkpoint" / role), state["tag"])
