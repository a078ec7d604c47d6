"""What every benchmark shares: paths, the setting it ran in, Ray start-up, the bench model, process-tree
sampling (memory and CPU per actor), and the JSON a benchmark hands to bench/run.py.

Benchmarks run as ``python -m bench.<name> --out PART.json [--quick]`` from the repo root; each prints
what it measured and the setting, and writes one JSON part that bench/report.py turns into the report.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import threading
import time
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _key, _value in (
    ("RAY_AUTH_MODE", "disabled"),
    ("RAY_USAGE_STATS_ENABLED", "0"),
    ("TOKENIZERS_PARALLELISM", "false"),
    ("VLLM_LOGGING_LEVEL", "WARNING"),
):
    os.environ.setdefault(_key, _value)

DEMO_CONFIG = ROOT / "configs" / "demo.yaml"
# Where the benchmarks read the demo's data and models and write their scratch (bench model, run dirs):
# runs/ of the checkout (git-ignored), or $RLHF_BENCH_WORK (the test suite points it at a temporary dir).
WORK = Path(os.environ.get("RLHF_BENCH_WORK", ROOT / "runs"))
DEMO_DATA = WORK / "demo" / "data"
DEMO_MODELS = WORK / "demo" / "models"
BENCH_DIR = WORK / "bench"

# The "bench model" (~20 M parameters): our tiny-model builder at a width where compute, not fixed
# overhead, dominates a step on 2 cores. Random init: a benchmark needs its shape, not its skill, and an
# untrained model rarely samples eos, so every summary runs to max_new_tokens on every side.
BENCH_MODEL_SHAPE = {
    "hidden_size": 512,
    "num_layers": 6,
    "num_heads": 8,
    "intermediate_size": 1408,
    "max_position_embeddings": 1024,
}


def setting() -> dict:
    """The machine a number was measured on; the load average says how shared it was."""
    import torch

    return {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "mem_total_gib": round(_mem_total() / 2**30, 1),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _mem_total() -> int:
    import psutil

    return psutil.virtual_memory().total


def demo_config(*overrides: str):
    """configs/demo.yaml as a PlusConfig, with ``key=value`` overrides (paths relative to the repo root)."""
    from rlhf_cluster.cli import load_config
    from rlhf_cluster.config import PlusConfig

    return load_config(
        PlusConfig,
        [
            "--config",
            str(DEMO_CONFIG),
            f"data.dir={DEMO_DATA}",
            f"models.summarizer={DEMO_MODELS / 'summarizer'}",
            f"models.reward_model={DEMO_MODELS / 'reward_model'}",
            *overrides,
        ],
    )


def require_demo_inputs() -> None:
    if not (DEMO_MODELS / "models.json").is_file() or not (DEMO_DATA / "ceilings.json").is_file():
        raise SystemExit(
            f"missing {DEMO_DATA} / {DEMO_MODELS}: run `make bench` (it generates them) or\n"
            f"  python -m jobs.make_data --dataset pets --out {DEMO_DATA} --seed 0\n"
            f"  python -m jobs.make_models --data {DEMO_DATA} --out "
            f"{DEMO_MODELS} --seed 0"
        )


def bench_model(shape: dict | None = None, name: str = "summarizer-20m") -> Path:
    """The bench summarizer (built once, cached under runs/bench/models/<name>), the demo's tokenizer."""
    from rlhf_cluster.builder_config import TinyModelOptions
    from rlhf_cluster.models import build_llama, count_parameters, load_tokenizer, save_checkpoint

    shape = shape or BENCH_MODEL_SHAPE
    out = BENCH_DIR / "models" / name
    stamp = out / "bench_shape.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == shape:
        return out
    tokenizer = load_tokenizer(DEMO_MODELS / "summarizer")
    model = build_llama(TinyModelOptions(**shape), tokenizer, seed=0)
    save_checkpoint(model, tokenizer, out)
    stamp.write_text(json.dumps(shape))
    print(f"bench model: {count_parameters(model):,} parameters → {out}", flush=True)
    return out


def parameters(path: Path) -> int:
    from rlhf_cluster.models import count_parameters, load_causal_lm

    return count_parameters(load_causal_lm(path))


def start_ray(num_cpus: int = 2, threads_per_actor: int | None = None) -> dict:
    """A local Ray for one benchmark process. ``threads_per_actor`` sets OMP_NUM_THREADS for every worker
    (Ray's default gives an actor of < 1 CPU one thread); bench/ is put on the workers' import path."""
    import ray

    env = {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "TOKENIZERS_PARALLELISM": "false",
        "VLLM_LOGGING_LEVEL": "WARNING",
    }
    if threads_per_actor:
        env["OMP_NUM_THREADS"] = str(threads_per_actor)
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=False,
        namespace="rlhf_cluster_bench",
        log_to_driver=False,
        runtime_env={"env_vars": env},
    )
    return {"ray_cpus": num_cpus, "omp_threads_per_actor": threads_per_actor or "Ray default (max(1, int(num_cpus)))"}


def median(xs: Iterable[float]) -> float | None:
    xs = list(xs)
    return statistics.median(xs) if xs else None


def mean(xs: Iterable[float]) -> float | None:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else None


def write_part(out: str | Path, name: str, result: dict) -> None:
    """One benchmark's JSON part (bench/run.py merges the parts)."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"benchmark": name, **result}, indent=2, default=_jsonable))
    print(f"[{name}] wrote {path}", flush=True)


def _jsonable(x):
    if hasattr(x, "item"):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON-serialisable: {type(x).__name__}")


# ----------------------------------------------------------------------------- process-tree sampling


def role_of(cmdline: list[str], name: str) -> str:
    """A process's role from its title: Ray sets ``ray::<ActorClass>[.method]``; vLLM names its engine."""
    title = " ".join(cmdline) if cmdline else name
    if title.startswith("VLLM::"):
        return "vLLM engine process"
    if title.startswith("ray::"):
        role = title[5:].split(".")[0].split(" ")[0].split("(")[0]
        if role in ("DashboardAgent", "RuntimeEnvAgent"):
            return "Ray dashboard/agents"
        return "Ray idle worker" if role in ("", "IDLE") else role
    for key, role in (
        ("gcs_server", "Ray GCS"),
        ("raylet", "Ray raylet"),
        ("dashboard", "Ray dashboard/agents"),
        ("runtime_env", "Ray dashboard/agents"),
        ("log_monitor", "Ray log monitor"),
        ("multiprocessing.spawn", "spawned child"),
        ("multiprocessing.resource_tracker", "spawned child"),
    ):
        if key in title:
            return role
    return name or "process"


class TreeSampler:
    """Samples a process tree (root + descendants) every ``interval`` s in a thread: the peak of the summed
    RSS and PSS, each role's peak (a process counts under its nearest ancestor that is a Ray actor, so a
    vLLM engine process counts under its RolloutActor), and CPU seconds per role.

    Roles are assigned after sampling, from each process's last known title: a Ray worker is "IDLE" until
    its actor starts, and children it spawns meanwhile must still count under the actor.
    RSS sums count shared pages (libraries, the object store) once per process; PSS splits them between
    the processes that map them, so the PSS sum is what the tree takes from the machine.
    """

    def __init__(self, root_pid: int, interval: float = 2.0):
        self.root_pid, self.interval = root_pid, interval
        self.own: dict[int, str] = {}  # pid → its own latest role
        self.ppid: dict[int, int] = {}
        self.samples: list[tuple[float, dict[int, tuple[int, int, float]]]] = []  # (time, pid → (rss, pss, cpu s))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self.t0 = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=10)
        self.wall_s = time.perf_counter() - self.t0

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample()
            except Exception:  # a process ending mid-read: skip this sample
                pass
            self._stop.wait(self.interval)

    def sample(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.root_pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        now: dict[int, tuple[int, int, float]] = {}
        for p in procs:
            try:
                role = "driver" if p.pid == self.root_pid else role_of(p.cmdline(), p.name())
                mem, cpu, ppid = p.memory_full_info(), p.cpu_times(), p.ppid()
            except psutil.Error:
                continue
            if role != "Ray idle worker" or p.pid not in self.own:  # keep an actor's name once it has one
                self.own[p.pid] = role
            self.ppid[p.pid] = ppid
            now[p.pid] = (mem.rss, getattr(mem, "pss", mem.rss), cpu.user + cpu.system)
        self.samples.append((time.time(), now))

    def group(self, pid: int) -> str:
        """The role of the nearest ancestor (self included) that is a Ray actor, else the process's own."""
        cur, seen = pid, set()
        while cur in self.own and cur not in seen:
            seen.add(cur)
            if self.own[cur] not in _NON_ACTOR_ROLES:
                return self.own[cur]  # an actor's children (its vLLM engine processes) count under the actor
            cur = self.ppid.get(cur, -1)
        return self.own.get(pid, "?")

    def cpu_between(self, t0: float, t1: float) -> dict[str, float]:
        """CPU seconds per role between unix times t0 and t1 (the samples nearest inside the window)."""
        inside = [(t, m) for t, m in self.samples if t0 <= t <= t1]
        if len(inside) < 2:
            return {}
        (ta, a), (tb, b) = inside[0], inside[-1]
        out: dict[str, float] = {"window_s": tb - ta}
        for pid, (_, _, cpu) in b.items():
            role = self.group(pid)
            out[role] = out.get(role, 0.0) + cpu - (a[pid][2] if pid in a else 0.0)
        return out

    def report(self) -> dict:
        gib = 2**30
        peak_rss = peak_pss = 0
        role_rss: dict[str, int] = {}
        role_pss: dict[str, int] = {}
        cpu_last: dict[int, float] = {}
        for _, per_pid in self.samples:
            rss_by: dict[str, int] = {}
            pss_by: dict[str, int] = {}
            for pid, (rss, pss, cpu) in per_pid.items():
                role = self.group(pid)
                rss_by[role] = rss_by.get(role, 0) + rss
                pss_by[role] = pss_by.get(role, 0) + pss
                cpu_last[pid] = cpu
            peak_rss, peak_pss = max(peak_rss, sum(rss_by.values())), max(peak_pss, sum(pss_by.values()))
            for role, v in rss_by.items():
                role_rss[role] = max(role_rss.get(role, 0), v)
            for role, v in pss_by.items():
                role_pss[role] = max(role_pss.get(role, 0), v)
        cpu_by: dict[str, float] = {}
        for pid, cpu in cpu_last.items():
            cpu_by[self.group(pid)] = cpu_by.get(self.group(pid), 0.0) + cpu
        ordered = lambda d, scale: {k: round(v / scale, 3) for k, v in sorted(d.items(), key=lambda kv: -kv[1])}  # noqa: E731
        return {
            "samples": len(self.samples),
            "interval_s": self.interval,
            "wall_s": round(getattr(self, "wall_s", 0.0), 1),
            "peak_rss_sum_gib": round(peak_rss / gib, 3),
            "peak_pss_sum_gib": round(peak_pss / gib, 3),
            "role_peak_rss_gib": ordered(role_rss, gib),
            "role_peak_pss_gib": ordered(role_pss, gib),
            "role_cpu_s": ordered(cpu_by, 1.0),
        }


_NON_ACTOR_ROLES = {
    "vLLM engine process",
    "spawned child",
    "Ray GCS",
    "Ray raylet",
    "Ray dashboard/agents",
    "Ray log monitor",
    "Ray idle worker",
    "driver",
    "python",
    "python3",
    "process",
}
