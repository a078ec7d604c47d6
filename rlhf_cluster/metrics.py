"""Run logging (``metrics.jsonl`` + TensorBoard) and the evaluation math, as plain functions.

Logging: ``MetricsLogger(run_dir)`` appends one JSON object per ``log`` call to ``run_dir/metrics.jsonl``
(``{"step", "split", "time", <metric>: float, ...}``, flushed at once so a crashed run keeps its
curve) and writes the same numbers as TensorBoard scalars ``<split>/<metric>`` under ``run_dir/tb``.

Evaluation math (no torch or model imports; array-likes in, Python numbers out):

- ``pair_correct``: 1 when r_chosen > r_rejected, 0.5 on a tie, 0 otherwise. A tie counts half: a model
  that scores everything equal should land at chance (0.5), not at 0 or 1.
- ``accuracy_by_subset``: mean of ``pair_correct`` over all / contested / agreed rows. Contested pairs
  are where users disagree: the only pairs that measure personalization (agreed pairs hide the gap).
- ``per_user_accuracy``: mean accuracy of each user, then the mean over users and over the worst decile.
- ``summary_information``: how much of the generator's ground truth about a user (``user_description``)
  the users' summaries still leave open — H(truth | summary) in bits, next to H(truth). 0 bits left: the
  summary names the user's kind; H(truth) left: it says nothing (e.g. one summary for everyone). It
  measures the summarizer alone; the reward model's accuracy says whether it reads what is there.
- ``mean_ci95``: mean over seeds and the half width of a Student-t 95 % confidence interval.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

RESERVED_KEYS = ("step", "split", "time")

# t(0.975, df) for df = 1..30 (computed with mpmath's regularized incomplete beta to 10 digits).
_T975 = (
    12.70620474,
    4.30265273,
    3.182446305,
    2.776445105,
    2.570581836,
    2.446911851,
    2.364624252,
    2.306004135,
    2.262157163,
    2.228138852,
    2.20098516,
    2.17881283,
    2.160368656,
    2.144786688,
    2.131449546,
    2.119905299,
    2.109815578,
    2.10092204,
    2.093024054,
    2.085963447,
    2.079613845,
    2.073873068,
    2.06865761,
    2.063898562,
    2.059538553,
    2.055529439,
    2.051830516,
    2.048407142,
    2.045229642,
    2.042272456,
)
_Z975 = 1.959963984540054


# ------------------------------------------------------------------------------------- logging


class MetricsLogger:
    """Append metrics to ``run_dir/metrics.jsonl`` and (optionally) TensorBoard ``run_dir/tb``.

    Non-finite values (nan, inf) are written as ``null`` in the JSONL file, which stays strict JSON,
    and as they are to TensorBoard. ``None`` (a metric not available for this data, e.g. contested accuracy
    without ``contested`` flags) is written as ``null`` and not to TensorBoard. Use as a context manager or
    call ``close()``.
    """

    def __init__(self, run_dir: str | Path, tensorboard: bool = True, keep_until_step: int | None = None):
        """``keep_until_step``: first drop the records after this step (a run resumed from a checkpoint at
        step k logs steps k+1… again; 0: start afresh). None: append to whatever is there."""
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        if keep_until_step is not None and self.path.exists():
            kept = [r for r in read_metrics(self.run_dir) if r["step"] <= keep_until_step]
            tmp = self.path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
            tmp.replace(self.path)
        self._file = self.path.open("a", encoding="utf-8")
        self._writer = None
        if tensorboard:
            # Imported here: tensorboard costs ~1 s to import and jobs may log without it.
            from torch.utils.tensorboard import SummaryWriter

            purge = None if keep_until_step is None else keep_until_step + 1  # TensorBoard hides later events
            self._writer = SummaryWriter(log_dir=str(self.run_dir / "tb"), purge_step=purge)

    def log(self, step: int, metrics: Mapping[str, Any], split: str = "train") -> dict:
        """Write one event; returns the JSON record written."""
        clash = [k for k in metrics if k in RESERVED_KEYS]
        if clash:
            raise ValueError(f"metric names {clash} clash with the record keys {RESERVED_KEYS}")
        # tensors, numpy scalars -> float; None (not available: e.g. contested accuracy on data without flags)
        values = {k: None if v is None else float(v) for k, v in metrics.items()}
        record = {"step": int(step), "split": split, "time": time.time()}
        record.update({k: (v if v is not None and math.isfinite(v) else None) for k, v in values.items()})
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._writer is not None:
            for name, value in values.items():
                if value is not None:
                    self._writer.add_scalar(f"{split}/{name}", value, int(step))
            self._writer.flush()
        return record

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_metrics(run_dir: str | Path, split: str | None = None) -> list[dict]:
    """The records of ``run_dir/metrics.jsonl`` (only ``split``'s when given), in file order."""
    lines = (Path(run_dir) / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    return [r for r in records if split is None or r["split"] == split]


# ----------------------------------------------------------------------------------- accuracy


def pair_correct(r_chosen: Sequence[float], r_rejected: Sequence[float]) -> np.ndarray:
    """Per pair: 1.0 if r_chosen > r_rejected, 0.5 on an exact tie, 0.0 otherwise (float64 [B])."""
    rc, rr = _as_float(r_chosen), _as_float(r_rejected)
    if rc.shape != rr.shape:
        raise ValueError(f"r_chosen {rc.shape} and r_rejected {rr.shape} differ in shape")
    return (rc > rr) + 0.5 * (rc == rr)


def accuracy_by_subset(
    r_chosen: Sequence[float], r_rejected: Sequence[float], contested: Sequence[bool | None]
) -> dict:
    """Pairwise accuracy over all rows and over the contested / agreed rows (ties count half).

    ``contested[i]`` is True, False or None (unknown); unknown rows count only in "all". An empty subset
    has accuracy None. Returns ``{"all", "contested", "agreed", "n", "n_contested", "n_agreed"}``.
    """
    correct = pair_correct(r_chosen, r_rejected)
    flags = list(contested)
    if len(flags) != len(correct):
        raise ValueError(f"contested has {len(flags)} entries for {len(correct)} pairs")
    is_contested = np.array([f is not None and bool(f) for f in flags], dtype=bool)
    is_agreed = np.array([f is not None and not bool(f) for f in flags], dtype=bool)
    return {
        "all": _mean_or_none(correct),
        "contested": _mean_or_none(correct[is_contested]),
        "agreed": _mean_or_none(correct[is_agreed]),
        "n": int(len(correct)),
        "n_contested": int(is_contested.sum()),
        "n_agreed": int(is_agreed.sum()),
    }


def per_user_accuracy(user_ids: Sequence[str], correct: Sequence[float]) -> dict:
    """Accuracy per user, summarised over users (each user weighs the same, however many pairs).

    ``mean``: the mean of the per-user accuracies. ``worst_decile``: sort users by accuracy, take the
    k = max(1, ceil(n_users / 10)) lowest — the fewest users that make up at least 10 % of them — and
    average their accuracies (ties at the boundary do not matter: only values are averaged).
    Returns ``{"mean", "worst_decile", "n_users", "n_worst"}``; all None / 0 when there are no pairs.
    """
    values = _as_float(correct)
    users = list(user_ids)
    if len(users) != len(values):
        raise ValueError(f"user_ids has {len(users)} entries for {len(values)} pairs")
    if not users:
        return {"mean": None, "worst_decile": None, "n_users": 0, "n_worst": 0}
    _, index = np.unique(np.array(users, dtype=object).astype(str), return_inverse=True)
    per_user = np.bincount(index, weights=values) / np.bincount(index)
    k = max(1, math.ceil(len(per_user) / 10))
    return {
        "mean": float(per_user.mean()),
        "worst_decile": float(np.sort(per_user)[:k].mean()),
        "n_users": int(len(per_user)),
        "n_worst": int(k),
    }


def summary_information(user_ids: Sequence[str], summaries: Sequence[str], truths: Sequence[str]) -> dict:
    """How much a user's summary says about their ground truth, counted once per user (their first row).

    Over the distinct users: ``distinct_summaries``; ``truth_entropy_bits`` H(truth) and
    ``conditional_entropy_bits`` H(truth | summary) of the empirical joint distribution (plug-in, base 2);
    ``majority_share``: the share of users whose truth is the most common one among users with their
    summary (the accuracy of guessing the truth from the summary). All None / 0 when there are no users.
    """
    users, texts, truth = list(user_ids), list(summaries), list(truths)
    if not len(users) == len(texts) == len(truth):
        raise ValueError(f"{len(users)} user ids, {len(texts)} summaries and {len(truth)} truths differ in number")
    first: dict[str, tuple[str, str]] = {}
    for u, z, t in zip(users, texts, truth):
        first.setdefault(u, (z, t))
    n = len(first)
    if n == 0:
        return {
            "n_users": 0,
            "distinct_summaries": 0,
            "truth_entropy_bits": None,
            "conditional_entropy_bits": None,
            "majority_share": None,
        }
    joint: dict[str, Counter] = {}  # summary → counts of truths
    for z, t in first.values():
        joint.setdefault(z, Counter())[t] += 1
    marginal = Counter(t for _, t in first.values())

    def entropy(counts) -> float:
        c = np.asarray(list(counts), dtype=np.float64)
        p = c / c.sum()
        return float(-(p * np.log2(p)).sum())

    return {
        "n_users": n,
        "distinct_summaries": len(joint),
        "truth_entropy_bits": entropy(marginal.values()),
        "conditional_entropy_bits": sum(sum(c.values()) / n * entropy(c.values()) for c in joint.values()),
        "majority_share": sum(max(c.values()) for c in joint.values()) / n,
    }


def roc_auc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """Area under the ROC curve: P(score of a random positive > that of a random negative), ties ½
    (the Mann–Whitney statistic, from average ranks). None when either class is absent."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="stable")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_s)) + 1]
    ends = np.r_[starts[1:], len(s)]
    for a, b in zip(starts, ends):  # tied scores share their average rank (1-based)
        ranks[order[a:b]] = (a + b + 1) / 2
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def binary_log_loss(probs: Sequence[float], labels: Sequence[bool]) -> float:
    """Mean −(y log p + (1 − y) log(1 − p)), nats; p clipped to [1e-15, 1 − 1e-15]."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-15, 1 - 1e-15)
    y = np.asarray(labels, dtype=bool)
    return float(-np.mean(np.where(y, np.log(p), np.log(1 - p))))


def calibration(probs: Sequence[float], labels: Sequence[bool], bins: int = 10) -> dict:
    """Reliability table and expected calibration error over ``bins`` equal-width bins of [0, 1]: per
    bin its count, mean predicted probability and observed rate; ECE = Σ (n_b / n) |observed − predicted|."""
    p, y = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    which = np.minimum((p * bins).astype(int), bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        inside = which == b
        n = int(inside.sum())
        if n:
            predicted, observed = float(p[inside].mean()), float(y[inside].mean())
            ece += n / len(p) * abs(observed - predicted)
            table.append(
                {"low": b / bins, "high": (b + 1) / bins, "n": n, "predicted": predicted, "observed": observed}
            )
    return {"ece": ece, "bins": table}


def binomial_ci95(p: float | None, n: int) -> float | None:
    """Half width of the 95 % normal-approximation (Wald) interval of an accuracy p measured on n pairs:
    1.96 · √(p(1 − p) / n); None without a value. A lower bound on the noise when rows are not independent
    (rows of one user share a summary's quality)."""
    if p is None or n <= 0:
        return None
    return _Z975 * (p * (1.0 - p) / n) ** 0.5


def format_accuracy(v: Mapping[str, Any], subset: str) -> str:
    """'all 0.875 ± 0.081 (n=64)' from ``accuracy_by_subset``'s dict; 'contested n/a' without a value."""
    n = int(v.get("n" if subset == "all" else f"n_{subset}") or 0)
    value, half = v.get(subset), binomial_ci95(v.get(subset), n)
    if value is None:
        return f"{subset} n/a"
    return f"{subset} {value:.3f}" + ("" if half is None else f" ± {half:.3f} (n={n})")


# ------------------------------------------------------------------------------ learning curves


def saturation(steps: Sequence[int], values: Sequence[float | None], tol: float = 0.01) -> dict:
    """Where a validation curve stops improving: its best value and step, and the first step whose value is
    within ``tol`` of the best (``saturated_at``; later steps gain less than ``tol``). None values (not
    measured) are skipped; an empty curve gives Nones. ``improving_at_end``: the best is the last point, so
    more steps may still help."""
    points = [(int(s), float(v)) for s, v in zip(steps, values) if v is not None]
    if not points:
        return {"best": None, "best_step": None, "saturated_at": None, "improving_at_end": None}
    best_step, best = max(points, key=lambda p: (p[1], -p[0]))
    first = next(s for s, v in points if v >= best - tol)
    return {"best": best, "best_step": best_step, "saturated_at": first, "improving_at_end": best_step == points[-1][0]}


# ------------------------------------------------------------------------------ across seeds


def t_quantile_975(df: int) -> float:
    """Student-t 97.5 % quantile: exact table for df ≤ 30, Cornish–Fisher expansion above.

    The expansion (Abramowitz & Stegun 26.7.5) is within 1e-6 of the exact value for df > 30.
    """
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


def mean_ci95(values: Iterable[float]) -> tuple[float, float | None]:
    """(mean, half width of the 95 % Student-t confidence interval of the mean).

    half width = t(0.975, n−1) · s / √n with s the sample standard deviation (ddof=1). For n = 1 the
    half width is None, not 0: one seed says nothing about the spread, and 0 would claim certainty.
    """
    x = _as_float(list(values))
    if len(x) == 0:
        raise ValueError("mean_ci95 needs at least one value")
    mean = float(x.mean())
    if len(x) == 1:
        return mean, None
    return mean, float(t_quantile_975(len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))


# ------------------------------------------------------------------------------------ helpers


def format_mean_ci(stat: Mapping[str, Any] | None) -> str:
    """A table cell of ``mean_ci95`` over seeds: '0.912 ± 0.031 (3 seeds)'; '0.912 (1 seed)' when a CI is
    undefined; '–' when missing. ``stat``: {"mean", "ci95", "n_seeds"}."""
    if not stat or stat["mean"] is None:
        return "–"
    seeds = f"({stat['n_seeds']} seed{'s' if stat['n_seeds'] != 1 else ''})"
    ci = f" ± {stat['ci95']:.3f}" if stat["ci95"] is not None else ""
    return f"{stat['mean']:.3f}{ci} {seeds}"


def _as_float(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor, without importing torch here
        values = values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64).reshape(-1)


def _mean_or_none(x: np.ndarray) -> float | None:
    return float(x.mean()) if len(x) else None


def summary_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Markdown bullets of sample summaries: user, summary, and the generator's description when known."""
    return [
        f"- `{r['user_id']}`: {r['summary']!r}" + (f" — truth: {r['truth']}" if r.get("truth") else "") for r in rows
    ]
