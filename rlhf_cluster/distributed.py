"""DeepSpeed data parallelism inside Ray actors: the config dict, process-group setup, a rank base class.

One DeepSpeed rank = one Ray actor; ``rlhf_cluster.worker_group.WorkerGroup`` starts N of them in a
placement group and hands each its rank, the world size and rank 0's address and a free port. Every
trained role (``actors.policy.PolicyRank``, ``actors.critic.CriticRank``, ``actors.reward_model.
RewardModelRank``) subclasses ``DeepSpeedRank`` and gets: process-group init (gloo on CPU, NCCL on GPU),
the tokenizer, the engine (``deepspeed.initialize`` with AdamW + linear warmup + clipping, ZeRO stage from
config) around the role's module, a ``_step`` that refuses a non-finite loss before anything is
updated, HF save/load, exact-resume state, and full-parameter access for weights, saving and checksums
(gathered under ZeRO-3). The role adds its module, its loss and its scoring methods.

DeepSpeed picks its accelerator when first imported, from ``DS_ACCELERATOR``; the worker group sets
``DS_ACCELERATOR=cpu`` in the actor's environment when the rank has no GPU. deepspeed is therefore
imported only inside the rank's methods, never at module level (the driver never imports it).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from rlhf_cluster.config import DeepSpeedConfig, OptimConfig


class NonFiniteLossError(FloatingPointError):
    """A NaN/±Inf loss (raised before backward, so weights are unchanged) or non-finite weights."""


# ------------------------------------------------------------------------------ config and device


def deepspeed_config(ds: DeepSpeedConfig, optim: OptimConfig, global_batch_size: int, world_size: int) -> dict:
    """The DeepSpeed config dict: one micro-batch per rank per step (no accumulation), AdamW, clipping.

    ``torch_adam`` makes DeepSpeed build ``torch.optim.AdamW``: its fused CPU/GPU Adam ops need a JIT
    C++/CUDA build, and torch's AdamW is a supported optimizer under every ZeRO stage.
    """
    if global_batch_size % world_size:
        raise ValueError(f"global batch size {global_batch_size} is not divisible by {world_size} ranks")
    return {
        "train_batch_size": global_batch_size,
        "train_micro_batch_size_per_gpu": global_batch_size // world_size,
        "gradient_accumulation_steps": 1,
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": optim.lr, "weight_decay": optim.weight_decay, "torch_adam": True, "adam_w_mode": True},
        },
        "gradient_clipping": optim.grad_clip,
        "zero_optimization": {"stage": ds.zero_stage},
        "bf16": {"enabled": ds.bf16},
        "steps_per_print": 10**9,  # we log our own metrics
        "wall_clock_breakdown": False,
    }


def warmup_factor(warmup_steps: int) -> Callable[[int], float]:
    """LR multiplier for LambdaLR: linear from lr/W at the first step up to lr at step W, then constant."""
    return lambda step: min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0


def uses_gpu() -> bool:
    """Whether this process trains on a GPU: one is visible and the group did not force DeepSpeed onto CPU."""
    return torch.cuda.is_available() and os.environ.get("DS_ACCELERATOR", "cuda") != "cpu"


def choose_backend(requested: str, gpu: bool) -> str:
    """torch.distributed backend: 'auto' → nccl with a GPU, gloo without; nccl without a GPU is an error."""
    if requested == "nccl" and not gpu:
        raise ValueError("deepspeed.backend=nccl needs a GPU on every rank; use 'gloo' or 'auto' on CPU")
    if requested == "auto":
        return "nccl" if gpu else "gloo"
    return requested


def rank_env(rank: int, world_size: int, master_addr: str, master_port: int) -> dict[str, str]:
    """torch.distributed's env:// rendezvous variables for one rank.

    LOCAL_RANK is 0: Ray gives each rank actor its own CUDA_VISIBLE_DEVICES, so its GPU is always cuda:0.
    """
    return {
        "RANK": str(rank),
        "WORLD_SIZE": str(world_size),
        "LOCAL_RANK": "0",
        "MASTER_ADDR": master_addr,
        "MASTER_PORT": str(master_port),
    }


def _skip_shm_comm_build(deepspeed) -> None:
    """Mark DeepSpeed's shared-memory comm op unavailable so that CPU init does not JIT-compile it (~80 s).

    On CPU that op only serves ``inference_all_reduce`` (tensor-parallel inference); training
    collectives go through gloo either way. There is no env var for this in DeepSpeed 0.19; the
    probed op table is cached in ``deepspeed.ops`` and read by ``comm.torch.build_shm_op``.
    """
    with contextlib.suppress(Exception):  # a DeepSpeed without this table just builds the op
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def write_dir_atomically(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_dir)``, then move tmp_dir to ``path`` (replacing it), so a failed or interrupted
    write never leaves a half-written ``path``. The temp dir sits next to ``path``: rename stays atomic."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{time.time_ns()}"
    tmp.mkdir()
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = path.parent / f".{path.name}.old-{os.getpid()}-{time.time_ns()}"
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)
    return path


def module_checksum(module: torch.nn.Module) -> float:
    """Sum of |parameter| in float64 (tied parameters once): equal weights give exactly equal sums."""
    return float(sum(p.detach().double().abs().sum().item() for p in module.parameters()))


def rng_state() -> dict:
    """This process's torch (CPU, and CUDA when present), numpy and Python RNG states."""
    import random

    import numpy as np

    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state`` returned (the CUDA part only where a GPU is visible)."""
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------- the rank


class DeepSpeedRank:
    """Base of a Ray actor class that is one DeepSpeed data-parallel rank (plain class; subclass + @ray.remote).

    Every role (summarizer policy, critic, reward model) starts the same way: process group, tokenizer,
    engine around the role's module; saves, loads and checksums the same way. A role adds only what
    differs: ``_module(path)`` (its model, wrapped so that the engine's forward is the role's forward),
    ``_optim()`` when it is not ``train.optim``, and its ``train_step`` (loss on this rank's shard, then
    ``_step(loss)``) and scoring methods. Class attributes say the rest: ``padding_side`` of its tokenizer,
    ``init_seed_offset`` (a fresh head's init seed: the same on every rank), ``eval_mode`` (no dropout,
    so the same tokens give the same values on every call).
    """

    rank: int
    world_size: int
    engine = None
    padding_side = "left"
    init_seed_offset = 0
    eval_mode = True

    def __init__(
        self,
        rank: int,
        world_size: int,
        master_addr: str,
        master_port: int,
        *,
        model_path: str,
        train,
        ds: DeepSpeedConfig,
        seed: int,
        global_batch_size: int,
        dtype: str = "float32",
    ):
        from rlhf_cluster.models import load_tokenizer

        t0 = time.perf_counter()
        self._init_distributed(rank, world_size, master_addr, master_port, ds)
        self.cfg, self.seed, self.global_batch_size, self.dtype = train, seed, global_batch_size, dtype
        self.tokenizer = load_tokenizer(model_path, padding_side=self.padding_side)
        self._build(model_path)
        self.startup_s = time.perf_counter() - t0

    def _module(self, path: str) -> torch.nn.Module:
        """The role's model from the HF checkpoint at ``path``, its forward the role's forward."""
        raise NotImplementedError

    def _optim(self) -> OptimConfig:
        return self.cfg.optim

    def _build(self, path: str) -> None:
        """A fresh engine (optimizer, LR schedule) around the checkpoint at ``path``."""
        torch.manual_seed(self.seed + self.init_seed_offset)
        self._build_engine(self._module(path), self._optim(), self.global_batch_size)
        if self.eval_mode:
            self.engine.eval()

    @property
    def hf_model(self) -> torch.nn.Module:
        """The HF model inside the engine (HF parameter names; what ``save`` writes)."""
        return self.engine.module.model

    def save(self, path: str) -> str:
        """Rank 0 writes the HF checkpoint (every rank must call: ZeRO-3 gathers); refuses non-finite weights."""
        return self._save_hf(path, self.hf_model, self.tokenizer)

    def load(self, path: str) -> None:
        """Weights of the HF checkpoint at ``path`` in a fresh engine: the optimizer state and LR warmup
        start over (an HF checkpoint holds neither)."""
        self._build(path)

    def state_dict_bytes(self) -> bytes:
        """Rank 0: the HF-named state dict as ``vllm_extension.state_dict_to_bytes`` bytes (what a rollout
        engine loads); other ranks: b"". Every rank must call (ZeRO-3 gathers)."""
        from rlhf_cluster.vllm_extension import state_dict_to_bytes

        with self._full_params():
            return state_dict_to_bytes(self.hf_model) if self.rank == 0 else b""

    def _global_sum(self, value: torch.Tensor) -> torch.Tensor:
        """``value`` summed over the ranks (a float tensor on this rank's device)."""
        total = value.detach().float().to(self.device).clone()
        if self.world_size > 1:
            torch.distributed.all_reduce(total)
        return total

    def _init_distributed(
        self, rank: int, world_size: int, master_addr: str, master_port: int, ds: DeepSpeedConfig
    ) -> None:
        os.environ.update(rank_env(rank, world_size, master_addr, master_port))
        self.rank, self.world_size, self.ds = rank, world_size, ds
        self.gpu = uses_gpu()
        self.device = torch.device("cuda", 0) if self.gpu else torch.device("cpu")
        if self.gpu:
            torch.cuda.set_device(self.device)
        import deepspeed

        if not self.gpu:
            _skip_shm_comm_build(deepspeed)
        deepspeed.init_distributed(
            dist_backend=choose_backend(ds.backend, self.gpu),
            auto_mpi_discovery=False,
            rank=rank,
            world_size=world_size,
            verbose=False,
        )
        self.global_step = 0

    def _build_engine(self, model: torch.nn.Module, optim: OptimConfig, global_batch_size: int) -> None:
        """Wrap ``model`` in a fresh engine (a fresh optimizer and LR schedule too); frees the previous one."""
        import deepspeed

        if self.engine is not None and hasattr(self.engine, "destroy"):
            self.engine.destroy()  # removes ZeRO-3 hooks and buffers of the old engine
        self.engine = None
        config = deepspeed_config(self.ds, optim, global_batch_size, self.world_size)
        schedule = warmup_factor(optim.warmup_steps)
        self.engine, *_ = deepspeed.initialize(
            model=model,
            model_parameters=[p for p in model.parameters() if p.requires_grad],
            config=config,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule),
        )
        self.global_step = 0

    def _step(self, loss: torch.Tensor) -> dict:
        """Backward and optimizer step on every rank — unless the loss, averaged over ranks, is not finite.

        The check comes first and uses the all-reduced loss, so every rank raises together (no rank is
        left waiting in a collective) and nothing — gradients, weights, optimizer state — is touched.
        Returns the global-batch loss, the pre-clipping gradient norm and the LR this step used.
        """
        step = self.global_step + 1
        global_loss = loss.detach().float().clone()
        if self.world_size > 1:
            torch.distributed.all_reduce(global_loss)
            global_loss /= self.world_size
        value = global_loss.item()
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"non-finite loss ({value}) at step {step}; optimizer not stepped, weights unchanged"
            )
        lr = self.engine.get_lr()[0]
        self.engine.backward(loss)
        grad_norm = self._stage0_grad_norm()
        self.engine.step()
        if grad_norm is None:
            grad_norm = self.engine.get_global_grad_norm()
        self.global_step = step
        return {"loss": value, "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"), "lr": lr}

    def _stage0_grad_norm(self) -> float | None:
        """Without ZeRO the engine clips but does not report the norm; its grads are whole (already
        averaged over ranks by backward), so measure them here. ZeRO stages report it after step()."""
        if self.ds.zero_stage != 0:
            return None
        grads = [p.grad for p in self.engine.module.parameters() if p.grad is not None]
        return float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0

    # ------------------------------------------------------------------- full parameters (ZeRO-3)

    @contextlib.contextmanager
    def _full_params(self) -> Iterator[torch.nn.Module]:
        """The engine's module with whole parameters on every rank: gathered under ZeRO-3 (all ranks
        must enter together), as-is otherwise (ZeRO 0-2 keep whole parameters on every rank)."""
        if self.ds.zero_stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(self.engine.module.parameters()), modifier_rank=None):
                yield self.engine.module
        else:
            yield self.engine.module

    def parameter_checksum(self) -> float:
        """Sum of |parameter| in float64 over the whole model: ranks holding identical weights agree exactly."""
        with self._full_params() as module:
            return module_checksum(module)

    def info(self) -> dict:
        return {
            "rank": self.rank,
            "world_size": self.world_size,
            "device": str(self.device),
            "zero_stage": self.ds.zero_stage,
            "startup_s": round(getattr(self, "startup_s", 0.0), 2),
            "step": self.global_step,
        }

    # ------------------------------------------------------------ training state (exact resume)

    def save_state(self, directory: str, tag: str) -> str:
        """Everything training needs to continue exactly: weights, optimizer and LR-schedule state
        (DeepSpeed's checkpoint: each rank writes its ZeRO partition), step count and this rank's RNG
        states, under ``directory/tag``. Every rank must call; on several nodes ``directory`` must be
        shared storage. Unlike ``save`` (an HF model for inference), this is not loadable by transformers."""
        client = {"global_step": self.global_step, "rng": rng_state()}
        self.engine.save_checkpoint(directory, tag=tag, client_state=client, save_latest=False)
        return str(Path(directory) / tag)

    def load_state(self, directory: str, tag: str) -> int:
        """Restore what ``save_state`` wrote (every rank must call); returns the restored step count."""
        if not (Path(directory) / tag).is_dir():  # DeepSpeed would fail on a bare assert
            raise FileNotFoundError(f"no DeepSpeed checkpoint {tag!r} under {directory}")
        path, client = self.engine.load_checkpoint(
            directory, tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if path is None:
            raise FileNotFoundError(f"DeepSpeed found no loadable checkpoint {tag!r} under {directory}")
        self.global_step = int(client["global_step"])
        set_rng_state(client["rng"])
        return self.global_step

    def _save_hf(self, path: str, hf_model: torch.nn.Module, tokenizer) -> str:
        """Rank 0 writes ``hf_model`` (a PreTrainedModel inside the engine) + tokenizer with save_pretrained.

        Every rank must call it (ZeRO-3 gathers). Non-finite weights are refused on every rank alike
        (they all see the same whole weights), and the write goes through a temp dir + rename.
        """
        with self._full_params():
            bad = [n for n, p in hf_model.named_parameters() if not torch.isfinite(p).all()]
            if bad:
                raise NonFiniteLossError(
                    f"refusing to save {path}: non-finite weights in {len(bad)} tensors (first: {bad[0]}) at "
                    f"step {self.global_step}"
                )

            def write(tmp: Path) -> None:
                state = {k: v.detach().cpu().clone() for k, v in hf_model.state_dict().items()}
                hf_model.save_pretrained(str(tmp), state_dict=state)
                tokenizer.save_pretrained(str(tmp))

            self._on_rank0(lambda: write_dir_atomically(path, write), f"save {path}")
        return str(path)

    def _on_rank0(self, fn: Callable[[], object], what: str) -> None:
        """Run ``fn`` on rank 0 and share success or failure, so a failed write raises on every rank
        instead of leaving the others waiting at the next collective."""
        error = None
        if self.rank == 0:
            try:
                fn()
            except Exception as e:  # re-raised below, on every rank
                error = e
        if self.world_size > 1:
            box = [None if error is None else f"{type(error).__name__}: {error}"]
            torch.distributed.broadcast_object_list(box, src=0)
            if box[0] is not None and error is None:
                raise RuntimeError(f"rank 0 failed to {what}: {box[0]}")
        if error is not None:
            raise error
