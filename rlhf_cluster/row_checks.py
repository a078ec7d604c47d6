"""Value checks of example rows, vectorized over an Arrow table with pyarrow.compute (nested lists included).

``value_problems(table)`` lists (table row, field path, reason) for every failed check: missing, null or
blank text; chosen == rejected (target or context pair); a target pair inside its own context (label leak);
bad context messages. ``rlhf_cluster.data`` maps the rows back to source rows and reports them.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rlhf_cluster.schema import MESSAGE_ROLES

TEXT_FIELDS = ("user_id", "prompt", "chosen", "rejected")


def value_problems(t: pa.Table) -> list[tuple[int, str, str]]:
    """(table row, field, reason) for every failed value check, vectorized over the loose table."""
    out: list[tuple[int, str, str]] = []
    for name in TEXT_FIELDS:
        col = _array(t, name)
        out += _rows(pc.is_null(col), name, "is missing or null")
        out += _rows(_is_blank(col), name, "is empty or whitespace-only")
    out += _rows(pc.is_null(_array(t, "context")), "context", "is missing or null (use [] for no context)")
    out += _rows(
        pc.equal(_array(t, "chosen"), _array(t, "rejected")),
        "chosen",
        "chosen == rejected: the pair states no preference",
    )
    out += _context_problems(t)
    out += _message_problems(t)
    return out


def _context_problems(t: pa.Table) -> list[tuple[int, str, str]]:
    ctx = _array(t, "context")
    flat, parents = pc.list_flatten(ctx), pc.list_parent_indices(ctx)
    fields = {k: pc.struct_field(flat, k) for k in ("prompt", "chosen", "rejected")}
    checks = [(pc.is_null(flat), "", "is null")]
    for k, col in fields.items():
        checks += [
            (pc.is_null(col), f".{k}", "is missing or null"),
            (_is_blank(col), f".{k}", "is empty or whitespace-only"),
        ]
    checks.append((pc.equal(fields["chosen"], fields["rejected"]), "", "chosen == rejected in a context pair"))
    tp, tc, tr = (pc.take(_array(t, k), parents) for k in ("prompt", "chosen", "rejected"))
    same_pair = pc.or_(
        pc.and_(pc.equal(fields["chosen"], tc), pc.equal(fields["rejected"], tr)),
        pc.and_(pc.equal(fields["chosen"], tr), pc.equal(fields["rejected"], tc)),
    )
    leak = pc.and_(pc.equal(fields["prompt"], tp), same_pair)
    checks.append((leak, "", "the target pair appears in its own context (label leak)"))
    return _nested_rows(parents, "context", checks)


def _message_problems(t: pa.Table) -> list[tuple[int, str, str]]:
    msgs = _array(t, "context_messages")
    flat, parents = pc.list_flatten(msgs), pc.list_parent_indices(msgs)
    role, content = pc.struct_field(flat, "role"), pc.struct_field(flat, "content")
    roles = ", ".join(MESSAGE_ROLES)
    checks = [
        (pc.is_null(flat), "", "is null"),
        (pc.is_null(role), ".role", "is missing or null"),
        (pc.invert(pc.is_in(role, pa.array(MESSAGE_ROLES))), ".role", f"unknown role (expected one of {roles})"),
        (pc.is_null(content), ".content", "is missing or null"),
        (_is_blank(content), ".content", "is empty or whitespace-only"),
    ]
    return _nested_rows(parents, "context_messages", checks)


def _rows(mask: pa.Array, name: str, reason: str) -> list[tuple[int, str, str]]:
    return [(int(r), name, reason) for r in np.flatnonzero(_np(mask))]


def _nested_rows(parents: pa.Array, name: str, checks: list) -> list[tuple[int, str, str]]:
    """Failed checks on flattened list items, named by their position in their own row's list."""
    parents_np = parents.to_numpy(zero_copy_only=False)
    out = []
    for mask, sub, reason in checks:
        idx = np.flatnonzero(_np(mask))
        pos = idx - np.searchsorted(parents_np, parents_np[idx])  # parents are sorted: first item of row
        out += [(int(parents_np[i]), f"{name}[{p}]{sub}", reason) for i, p in zip(idx, pos)]
    return out


def _is_blank(col: pa.Array) -> pa.Array:
    return pc.equal(pc.utf8_trim_whitespace(col), "")


def _np(mask: pa.Array) -> np.ndarray:
    return pc.fill_null(mask, False).to_numpy(zero_copy_only=False)


def _array(t: pa.Table, name: str) -> pa.Array:
    return t.column(name).combine_chunks()
