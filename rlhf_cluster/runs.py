"""What a training run directory holds: its validated config and which checkpoint to load. Read by the
Serve endpoint (deploy/serve.py) and by stage 2 (jobs.personalize), which both start from a jobs.plus or a
jobs.train_rm run."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml
from pydantic import ValidationError

from rlhf_cluster.cli import ConfigError
from rlhf_cluster.config import PlusConfig, TrainRMConfig

# Next to a jobs.plus evaluate/ view's config.yaml: {"label": ..., "config": the PlusConfig}. jobs.plus writes
# it; jobs.compare groups and labels the view by it (the view's TrainRMConfig cannot tell PLUS experiments apart).
PLUS_VIEW_FILE = "plus.yaml"


def read_run(run_dir: Path, which: str = "best") -> dict:
    """What a jobs.plus or jobs.train_rm run directory holds, from its config.yaml and checkpoints: the
    reward model and summarizer checkpoints of ``which`` (best falls back to last with a notice), the reward
    model's settings, and the run's validated config (``config``). A ConfigError names what is missing."""
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise ConfigError(f"  run_dir {run_dir}: no config.yaml; expected a jobs.plus or jobs.train_rm run directory")
    data = yaml.safe_load(cfg_path.read_text()) or {}
    is_plus = isinstance(data, dict) and "policy" in data
    model = PlusConfig if is_plus else TrainRMConfig
    try:
        run = model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"  {cfg_path}: not a valid {model.__name__}:\n{err}") from None
    # jobs.plus: <ck>/reward_model + <ck>/summarizer; jobs.train_rm: <ck> is the reward model.
    ck = pick_checkpoint(run_dir, which, "reward_model" if is_plus else "")
    summarizer = str(ck / "summarizer") if is_plus else run.models.summarizer
    return {
        "reward_model": str(ck / "reward_model") if is_plus else str(ck),
        "summarizer": summarizer,
        "backbone": run.models.reward_model,
        "conditioning": run.rm.conditioning,
        "max_length": run.rm.max_length,
        "truncation_side": run.rm.truncation_side,
        "max_context_pairs": run.rm.max_context_pairs,
        "source": f"{'jobs.plus' if is_plus else 'jobs.train_rm'} run {run_dir} ({ck.name})",
        "config": run,
    }


def pick_checkpoint(run_dir: Path, which: str, inner: str) -> Path:
    order = ["best", "last"] if which == "best" else ["last"]
    for name in order:
        if (run_dir / name / inner / "config.json").is_file():
            if name != which:
                print(f"notice: {run_dir / which} has no checkpoint; serving {run_dir / name}", file=sys.stderr)
            return run_dir / name
    tried = ", ".join(str(run_dir / n / inner) for n in order)
    raise ConfigError(f"  run_dir {run_dir}: no checkpoint (tried {tried})")


def expand_run_dirs(spec: list[str] | str, flag: str = "--runs") -> list[Path]:
    """Run directories from paths and glob patterns, in the order given (glob matches sorted; a run named
    twice counts once). A ValueError names a pattern that matches nothing or a directory that is missing."""
    import glob

    out: list[Path] = []
    for item in [spec] if isinstance(spec, str) else spec:
        if any(c in item for c in "*?["):
            matches = sorted(Path(p) for p in glob.glob(item) if Path(p).is_dir())
            if not matches:
                raise ValueError(f"{flag} pattern {item!r} matches no directory")
            out += matches
        elif not Path(item).is_dir():
            raise ValueError(f"run directory {item} does not exist")
        else:
            out.append(Path(item))
    return list(dict.fromkeys(out))
