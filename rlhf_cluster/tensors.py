"""Arrow list columns ↔ padded torch tensors, for actors that receive token batches as Arrow tables.

A token column is ``list<int*>`` (token ids) or ``list<float*>`` (per-token logprobs), one list per row.
``pad_list_column`` turns it into ``(values [B, T], attention_mask [B, T])``; ``tensor_to_list_array``
is its inverse and drops the padding again. Both are vectorized with numpy (no per-row Python loop).

Conventions, chosen to match Hugging Face:
* ``attention_mask`` is ``torch.long`` with 1 on real tokens and 0 on padding.
* ``side="left"`` puts padding before the tokens (what decoder-only generation wants), ``"right"`` after.
* ``max_len`` fixes T: shorter rows are padded up to it; a longer row is an error unless
  ``truncate_side`` says which end to cut (``"left"`` keeps the last ``max_len`` tokens — the usual
  choice for a prompt whose end matters — ``"right"`` keeps the first). Truncating silently is how
  labels get cut off unnoticed, hence no default.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

Side = Literal["left", "right"]


def pad_list_column(
    column: pa.Array | pa.ChunkedArray,
    pad_value: int | float,
    side: Side = "right",
    dtype: torch.dtype | None = None,
    max_len: int | None = None,
    truncate_side: Side | None = None,
    name: str = "column",
) -> tuple[torch.Tensor, torch.Tensor]:
    """A list column as ``(values [B, T], attention_mask [B, T])``; ``name`` labels errors.

    ``dtype`` defaults to ``torch.long`` for integer lists and ``torch.float32`` for float lists.
    T is ``max_len`` when given, else the longest row (0 when every row is empty).
    """
    arr = _list_array(column, name)
    _check_side(side, "side")
    if truncate_side is not None:
        _check_side(truncate_side, "truncate_side")
    values = _values(arr, name)
    dtype = dtype or (torch.float32 if np.issubdtype(values.dtype, np.floating) else torch.long)
    if np.issubdtype(values.dtype, np.floating) and not dtype.is_floating_point:
        raise TypeError(f"{name}: float values cannot become {dtype} (that would round them)")
    lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False).astype(np.int64)
    width = int(lengths.max()) if max_len is None else max_len
    _check_fits(lengths, width, truncate_side, name)

    rows = np.repeat(np.arange(len(lengths)), lengths)  # row of each value
    pos = np.arange(len(values)) - np.repeat(np.cumsum(lengths) - lengths, lengths)  # position in its row
    kept = np.minimum(lengths, width)
    cut = lengths - kept  # tokens dropped from each row
    keep = pos >= cut[rows] if truncate_side == "left" else pos < width
    rows, pos, values = rows[keep], pos[keep], values[keep]
    if truncate_side == "left":
        pos = pos - cut[rows]
    cols = pos + (width - kept[rows] if side == "left" else 0)

    wide = np.float64 if np.issubdtype(values.dtype, np.floating) else np.int64  # any pad_value fits
    out = np.full((len(lengths), width), pad_value, dtype=wide)
    mask = np.zeros((len(lengths), width), dtype=np.int64)
    out[rows, cols] = values
    mask[rows, cols] = 1
    return torch.from_numpy(out).to(dtype), torch.from_numpy(mask)


def tensor_to_list_array(
    tensor: torch.Tensor,
    mask: torch.Tensor | None = None,
    lengths: torch.Tensor | np.ndarray | list[int] | None = None,
    side: Side = "right",
    value_type: pa.DataType | None = None,
) -> pa.ListArray:
    """The inverse of ``pad_list_column``: one list per row of ``tensor [B, T]`` without its padding.

    Give either ``mask`` (1 = keep; any pattern works) or ``lengths`` with the ``side`` the padding is on.
    ``value_type`` defaults to int64 for integer tensors and float32 for float ones (logprobs).
    """
    if tensor.dim() != 2:
        raise ValueError(f"expected a [B, T] tensor, got shape {tuple(tensor.shape)}")
    if (mask is None) == (lengths is None):
        raise ValueError("give exactly one of mask= or lengths=")
    if mask is None:
        mask = _mask_from_lengths(lengths, tensor.shape, side)
    if tuple(mask.shape) != tuple(tensor.shape):
        raise ValueError(f"mask shape {tuple(mask.shape)} differs from tensor shape {tuple(tensor.shape)}")
    t = tensor.detach().cpu()
    is_float = t.is_floating_point()
    value_type = value_type or (pa.float32() if is_float else pa.int64())
    if is_float and t.dtype not in (torch.float32, torch.float64):
        t = t.float()  # bfloat16/float16 have no numpy dtype
    keep = mask.detach().cpu().bool()
    values = t[keep].numpy()  # row-major: each row's kept values stay contiguous and in order
    offsets = np.concatenate([[0], np.cumsum(keep.sum(dim=1).numpy())]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values).cast(value_type))


# ------------------------------------------------------------------------------------- helpers


def _list_array(column: pa.Array | pa.ChunkedArray, name: str) -> pa.Array:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if not isinstance(column, pa.Array):
        raise TypeError(f"{name}: expected a pyarrow list array, got {type(column).__name__}")
    typ = column.type
    if not (pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_fixed_size_list(typ)):
        raise TypeError(f"{name}: expected a list<int> or list<float> column, got {typ}")
    if len(column) == 0:
        raise ValueError(f"{name}: the column has no rows (an empty batch cannot become a [B, T] tensor)")
    if column.null_count:
        first = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise ValueError(f"{name}: row {first} is null ({column.null_count} null rows); use [] for no tokens")
    return column


def _values(arr: pa.Array, name: str) -> np.ndarray:
    value_type = arr.type.value_type
    if not (pa.types.is_integer(value_type) or pa.types.is_floating(value_type)):
        raise TypeError(f"{name}: expected list<int> or list<float>, got {arr.type}")
    flat = pc.list_flatten(arr)
    if flat.null_count:
        raise ValueError(f"{name}: {flat.null_count} null values inside the lists")
    return flat.to_numpy(zero_copy_only=False)


def _check_fits(lengths: np.ndarray, width: int, truncate_side: Side | None, name: str) -> None:
    if width < 0:
        raise ValueError(f"{name}: max_len must be >= 0, got {width}")
    too_long = np.flatnonzero(lengths > width)
    if len(too_long) and truncate_side is None:
        r = int(too_long[0])
        raise ValueError(
            f"{name}: {len(too_long)} rows are longer than max_len={width} (row {r} has {lengths[r]} values); "
            "pass truncate_side='left' (keep the end) or 'right' (keep the start), or a larger max_len"
        )


def _check_side(side: str, what: str) -> None:
    if side not in ("left", "right"):
        raise ValueError(f"{what}: expected 'left' or 'right', got {side!r}")


def _mask_from_lengths(lengths, shape: torch.Size, side: Side) -> torch.Tensor:
    _check_side(side, "side")
    n = torch.as_tensor(np.asarray(lengths), dtype=torch.long).reshape(-1, 1)
    if n.shape[0] != shape[0] or bool((n < 0).any()) or bool((n > shape[1]).any()):
        raise ValueError(f"lengths must be {shape[0]} values in [0, {shape[1]}], got {n.flatten().tolist()}")
    pos = torch.arange(shape[1]).unsqueeze(0)
    return pos < n if side == "right" else pos >= shape[1] - n
