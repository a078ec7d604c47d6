"""Read and write personalized-preference examples (``schema.EXAMPLE_SCHEMA``), validating every row.

Files: ``.parquet``, ``.jsonl`` (one JSON object per line) or ``.json`` (one array of objects). A dataset
directory holds one file per split, ``<dir>/<split>.parquet`` or ``<dir>/<split>.jsonl`` (``.json`` is not
a split there: metadata such as ``ceilings.json`` lives beside the splits). A split may also be a folder
``<dir>/<split>/``: a Hugging Face ``datasets`` save_to_disk or ``*.parquet`` shards (see hf_input.py).

Two row formats, told apart by their columns (or by ``format=``):

* ``rlhf_cluster``: the columns of EXAMPLE_SCHEMA. Optional columns absent from the file become nulls;
  an absent or null ``context_messages`` becomes ``[]``.
* ``plus``: the public PLUS release (Nam et al. 2025): ``context``/``context_messages`` and up to three
  target triples per row (reward, train, eval). One PLUS row becomes one of our rows per selected triple
  (``plus_pairs=``, default reward and train; ``ReadReport.plus_roles`` says which triple each row came
  from); the eval triple is held out as the split ``<stem>_eval``. Context pairs written as text are
  recovered, the summarizer's instruction stripped and, without ``user_id``, ids derived from the
  context: rlhf_cluster/plus_format.py has the rules; one line per file reports what was done.

Validation: a bad row fails with ``DataError`` naming the file, the row (0-based; the line for JSONL)
and the field: malformed JSON, wrong types, missing/null/empty/whitespace-only text, unknown message
roles, chosen == rejected (target or context pair), and a target pair that appears in its own context
(same prompt, same two responses in either order). Whole-file problems (no required column, no file)
always raise. With ``skip_bad_rows=True`` bad rows are skipped, never silently: a warning
``skipped N bad rows of M in FILE (first: ...)`` is logged and ``read_examples_with_report`` returns the
list. Unknown columns are ignored on read with one warning naming them, and refused on write (the
schema is the contract: extend schema.py instead).

Type checks of JSON rows are per-row Python (they must be: JSON has no column types); every value check
runs vectorized on the Arrow table with pyarrow.compute, nested lists included, so Parquet files already
in the schema are never turned into Python objects.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rlhf_cluster import hf_input
from rlhf_cluster.plus_format import (
    PLUS_DEFAULT_PAIRS,
    PLUS_EVAL_SUFFIX,
    PLUS_KEYS,
    PLUS_TRIPLES,
    PlusStats,
    RowProblem,
    describe_kind,
    describe_value,
    plus_rows,
)
from rlhf_cluster.row_checks import value_problems
from rlhf_cluster.schema import EXAMPLE_SCHEMA, REQUIRED_FIELDS

log = logging.getLogger(__name__)

Format = Literal["auto", "rlhf_cluster", "plus"]

SPLIT_SUFFIXES = (".parquet", ".jsonl")


class DataError(ValueError):
    """A data file a user must fix. The message names the file, the row and the field."""

    def __init__(self, message: str, problems: list[Problem] | None = None):
        super().__init__(message)
        self.problems = problems or []


@dataclass(frozen=True)
class Problem:
    row: int  # 0-based row of the source file (JSONL: counting non-blank lines)
    line: int | None  # 1-based line number (JSONL only)
    field: str  # column, with a path inside nested values: "context[2].chosen"
    reason: str

    def __str__(self) -> str:
        at = f"row {self.row}" + (f" (line {self.line})" if self.line is not None else "")
        return f"{at} field '{self.field}': {self.reason}"


@dataclass
class ReadReport:
    path: str
    format: str
    n_source_rows: int = 0  # rows read from the file (after `limit`)
    n_rows: int = 0  # rows in the returned table
    problems: list[Problem] = field(default_factory=list)  # one per skipped source row, in row order
    ignored_columns: list[str] = field(default_factory=list)
    plus_roles: list[str] | None = None  # PLUS only: "reward" / "train" / "eval" per returned row
    plus_stats: PlusStats | None = None  # PLUS only: pairs recovered from text, ids derived, ...

    @property
    def n_skipped(self) -> int:
        return len(self.problems)


# ------------------------------------------------------------------------------------------- API


def read_examples(path: str | os.PathLike, **kw: Any) -> pa.Table:
    """Rows of a Parquet/JSONL/JSON file as a validated EXAMPLE_SCHEMA table (see module doc)."""
    return read_examples_with_report(path, **kw)[0]


def read_examples_with_report(
    path: str | os.PathLike,
    *,
    format: Format = "auto",
    skip_bad_rows: bool = False,
    limit: int | None = None,
    plus_pairs: Iterable[str] = PLUS_DEFAULT_PAIRS,
) -> tuple[pa.Table, ReadReport]:
    """Like ``read_examples``, also returning what was skipped, ignored and (PLUS) mapped.

    ``limit`` reads only the first ``limit`` rows of the file; the result holds at most ``limit`` rows.
    """
    if format not in ("auto", "rlhf_cluster", "plus"):
        raise ValueError(f"format: expected 'auto', 'rlhf_cluster' or 'plus', got {format!r}")
    path = Path(path)
    src = _load(path, limit)
    fmt = _detect_format(src, format)
    report = ReadReport(str(path), fmt, n_source_rows=src.n_rows)
    if fmt == "plus":
        cand = _from_plus(src, tuple(plus_pairs), report)
    else:
        cand = _from_rlhf_cluster(src, report)
    for prob in value_problems(cand.table):
        cand.add_problem(*prob)
    table, roles = cand.finish(limit)
    _report_problems(path, cand.problems, src.n_rows, skip_bad_rows, report)
    report.n_rows, report.plus_roles = table.num_rows, roles if fmt == "plus" else None
    if fmt == "plus":
        roles_read = ", ".join(f"{r} {roles.count(r)}" for r in PLUS_TRIPLES if r in roles)
        log.warning(
            "%s: PLUS format: %d rows → %d pairs (%s); %s",
            path,
            src.n_rows,
            table.num_rows,
            roles_read or "none",
            report.plus_stats.describe() or "nothing converted",
        )
    return table, report


def write_examples(table: pa.Table, path: str | os.PathLike) -> Path:
    """Validate ``table`` and write it as Parquet or JSONL (by suffix), atomically. Returns the path."""
    path = Path(path)
    if path.suffix not in SPLIT_SUFFIXES:
        raise DataError(f"{path}: cannot write '{path.suffix}', use one of {', '.join(SPLIT_SUFFIXES)}")
    extra = [c for c in table.column_names if c not in EXAMPLE_SCHEMA.names]
    if extra:
        raise DataError(f"{path}: columns not in EXAMPLE_SCHEMA: {', '.join(extra)} (extend schema.py first)")
    loose = _conform_table(table, path)
    problems = [Problem(r, None, f, why) for r, f, why in value_problems(loose)]
    if problems:
        raise DataError(f"cannot write {path}: {problems[0]}" + _more(len(problems)), problems)
    out = _strict(loose)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".parquet":
        pq.write_table(out, tmp)
    else:
        with open(tmp, "w", encoding="utf-8") as f:
            for row in out.to_pylist():
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)  # readers never see a half-written split
    return path


def list_splits(data_dir: str | os.PathLike) -> list[str]:
    """Names of the splits in a dataset directory (files ending in .parquet or .jsonl, split folders, and
    ``<stem>_eval`` for the eval pairs held out of a PLUS-format file)."""
    d = Path(data_dir)
    if not d.is_dir():
        raise DataError(f"data directory {d} does not exist")
    files = [p for p in d.iterdir() if p.suffix in SPLIT_SUFFIXES and p.is_file()]
    held_out = {p.stem + PLUS_EVAL_SUFFIX for p in files if _has_plus_eval(p)}  # PLUS eval pairs: a split
    return sorted({p.stem for p in files} | set(hf_input.dir_splits(d)) | held_out)


def split_path(data_dir: str | os.PathLike, split: str) -> Path:
    """The file (or folder) of ``split`` in ``data_dir``; a DataError lists the available splits when missing."""
    d = Path(data_dir)
    found = [d / f"{split}{s}" for s in SPLIT_SUFFIXES if (d / f"{split}{s}").is_file()]
    found += [d / split] if hf_input.is_split_dir(d / split) else []
    if len(found) == 1:
        return found[0]
    if found:
        raise DataError(f"split '{split}' is ambiguous in {data_dir}: both {found[0].name} and {found[1].name}")
    available = list_splits(data_dir)
    raise DataError(
        f"no split '{split}' in {data_dir} (looked for {split}.parquet, {split}.jsonl, {split}/); "
        f"available splits: {', '.join(available) if available else 'none'}"
    )


def read_split(data_dir: str | os.PathLike, split: str, **kw: Any) -> pa.Table:
    """``read_examples`` of ``<data_dir>/<split>.parquet``, ``.jsonl`` or split folder ``<split>/``;
    ``<stem>_eval`` with no file of its own is the eval pairs held out of the PLUS-format split ``<stem>``."""
    d, base = Path(data_dir), split.removesuffix(PLUS_EVAL_SUFFIX)
    own = [d / f"{split}{s}" for s in SPLIT_SUFFIXES] + [d / split]
    if split != base and not any(p.exists() for p in own) and _has_plus_eval(path := split_path(d, base)):
        return read_examples(path, **{**kw, "plus_pairs": ("eval",)})
    return read_examples(split_path(data_dir, split), **kw)


def _has_plus_eval(path: Path) -> bool:
    """Whether a split file is in the PLUS format with eval pairs (checked cheaply: schema / text)."""
    if path.suffix == ".parquet":
        names = pq.read_schema(path).names
        return "eval_prompt" in names and "prompt" not in names
    if path.suffix != ".jsonl" or not path.is_file():
        return False
    with open(path, encoding="utf-8") as f:
        first = next((line for line in f if line.strip()), "")
        has_eval = '"eval_prompt"' in first or any('"eval_prompt"' in line for line in f)
    try:
        return has_eval and "prompt" not in json.loads(first)
    except (json.JSONDecodeError, TypeError):
        return False


# --------------------------------------------------------------------------------------- loading


@dataclass
class _Source:
    """What a file holds before validation: Python records or (Parquet) an Arrow table."""

    path: Path
    columns: list[str]
    records: list[Any] | None = None  # JSON rows; None where the line did not parse
    table: pa.Table | None = None
    lines: list[int] | None = None  # JSONL line number of each row
    bad_json: dict[int, str] = field(default_factory=dict)  # row -> parse error
    shards: list[tuple[str, int]] = field(default_factory=list)  # folders: (shard file, its first row)

    @property
    def n_rows(self) -> int:
        return self.table.num_rows if self.table is not None else len(self.records)

    def problem(self, row: int, field_: str, reason: str) -> Problem:
        line = self.lines[row] if self.lines else None
        return Problem(row, line, field_, reason + hf_input.shard_note(self.shards, row))


def _load(path: Path, limit: int | None) -> _Source:
    if path.is_dir() or (path.suffix == ".parquet" and path.is_file()):
        table, shards = hf_input.read_table(path)  # a Parquet file, a datasets save_to_disk, Parquet shards
        table = table.slice(0, limit) if limit is not None else table
        return _Source(path, table.column_names, table=table, shards=shards)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.suffix == ".jsonl":
        return _load_jsonl(path, limit)
    if path.suffix == ".json":
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: malformed JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
        if not isinstance(records, list):
            raise DataError(f"{path}: expected a JSON array of row objects, got {describe_kind(records)}")
        return _with_columns(_Source(path, [], records=records[:limit]))
    raise DataError(f"{path}: unsupported file type '{path.suffix}' (use .parquet, .jsonl or .json)")


def _load_jsonl(path: Path, limit: int | None) -> _Source:
    src = _Source(path, [], records=[], lines=[])
    with open(path, encoding="utf-8") as f:
        for lineno, text in enumerate(f, start=1):
            if not text.strip():
                continue  # blank lines (a trailing newline) are not rows
            if limit is not None and len(src.records) >= limit:
                break
            try:
                rec = json.loads(text)
            except json.JSONDecodeError as err:
                rec = None
                src.bad_json[len(src.records)] = f"malformed JSON at column {err.colno}: {err.msg}"
            src.records.append(rec)
            src.lines.append(lineno)
    return _with_columns(src)


def _with_columns(src: _Source) -> _Source:
    """Columns of JSON rows: every key seen in any row, in first-seen order; non-objects are bad rows."""
    seen: dict[str, None] = {}
    for i, rec in enumerate(src.records):
        if isinstance(rec, dict):
            seen.update(dict.fromkeys(rec))
        elif i not in src.bad_json:
            src.bad_json[i] = f"expected a JSON object, got {describe_kind(rec)}"
    src.columns = list(seen)
    return src


def _detect_format(src: _Source, fmt: Format) -> str:
    cols, plus_prompts = set(src.columns), [p for p, _, _ in PLUS_TRIPLES.values()]
    if src.n_rows == len(src.bad_json):  # nothing parsed (or no rows): the row checks report each line
        return "rlhf_cluster" if fmt == "auto" else fmt
    if fmt == "auto":
        fmt = "plus" if "prompt" not in cols and cols.intersection(plus_prompts) else "rlhf_cluster"
    if fmt == "plus" and not cols.intersection(plus_prompts):
        raise DataError(
            f"{src.path}: not PLUS format: no column {', '.join(plus_prompts)}; "
            f"columns present: {', '.join(src.columns)}"
        )
    missing = [c for c in REQUIRED_FIELDS if c not in cols]
    if fmt == "rlhf_cluster" and missing:
        raise DataError(
            f"{src.path}: missing required column(s) {', '.join(missing)}; columns present: "
            f"{', '.join(src.columns)} (PLUS files have reward_prompt/train_prompt/eval_prompt)"
        )
    return fmt


# ------------------------------------------------------------------------------ rows → Arrow


@dataclass
class _Candidates:
    """Rows that passed the type stage, as a loosely typed table, mapped back to source rows."""

    src: _Source
    table: pa.Table
    origin: list[int]  # source row of each table row
    names: list[dict[str, str]] | None = None  # our column -> source column ("prompt" -> "train_prompt")
    roles: list[str] | None = None  # PLUS triple of each table row
    problems: dict[int, Problem] = field(default_factory=dict)  # first problem per source row

    def add_problem(self, table_row: int, field_: str, reason: str) -> None:
        if self.names is not None:
            field_ = _rename(field_, self.names[table_row])
        self.problems.setdefault(self.origin[table_row], self.src.problem(self.origin[table_row], field_, reason))

    def finish(self, limit: int | None) -> tuple[pa.Table, list[str] | None]:
        keep = [i for i, r in enumerate(self.origin) if r not in self.problems][:limit]
        roles = [self.roles[i] for i in keep] if self.roles is not None else None
        return _strict(self.table.take(pa.array(keep, pa.int64()))), roles


def _from_rlhf_cluster(src: _Source, report: ReadReport) -> _Candidates:
    report.ignored_columns = [c for c in src.columns if c not in EXAMPLE_SCHEMA.names]
    _warn_ignored(src.path, report.ignored_columns)
    if src.table is not None:
        try:
            return _Candidates(src, _conform_table(src.table, src.path), list(range(src.n_rows)))
        except DataError:
            src.records = src.table.to_pylist()  # odd column types: the per-row checks say which rows
    return _from_records(src, _our_rows)


def _our_rows(rec: dict, i: int) -> list[tuple[str, dict, dict]]:
    """One row per record; null or absent context_messages means no messages."""
    messages = rec.get("context_messages")
    return [("", {**rec, "context_messages": [] if messages is None else messages}, {})]


def _from_records(src: _Source, make_rows: Callable[[dict, int], list[tuple[str, dict, dict]]]) -> _Candidates:
    """Type-check the rows ``make_rows`` makes of each JSON record: (role, our row, our -> source column)."""
    rows, origin, names, roles, problems = [], [], [], [], {}
    for i, rec in enumerate(src.records):
        try:
            if i in src.bad_json:
                raise RowProblem("<json>", src.bad_json[i])
            made = make_rows(rec, i)
            for _, row, name_map in made:
                if err := _type_error(row):
                    raise RowProblem(_rename(err[0], name_map), err[1])
        except RowProblem as p:
            problems[i] = src.problem(i, p.field, p.reason)
            continue
        for role, row, name_map in made:
            rows.append({f.name: row.get(f.name) for f in EXAMPLE_SCHEMA})
            origin.append(i)
            names.append(name_map)
            roles.append(role)
    return _Candidates(src, pa.Table.from_pylist(rows, schema=_LOOSE), origin, names, roles, problems)


def _type_error(row: dict) -> tuple[str, str] | None:
    """(field path, reason) for the first value of ``row`` that cannot become its schema type."""
    for name, check in _ROW_CHECKS:
        err = check(row.get(name))
        if err:
            return name + err[0], err[1]
    return None


def _checker(typ: pa.DataType) -> Callable[[Any], tuple[str, str] | None]:
    """A type check for one Arrow type, built once: the JSON rows are checked value by value.

    The check returns (path below this value, reason) or None; nulls pass (the value stage checks them).
    """
    if pa.types.is_list(typ):
        item = _checker(typ.value_type)

        def check_list(v: Any) -> tuple[str, str] | None:
            if v is None:
                return None
            if type(v) is not list:
                return (
                    "",
                    f"expected a list of {_type_words(typ.value_type)}, got {describe_kind(v)} {describe_value(v)}",
                )
            for k, x in enumerate(v):
                if (err := item(x)) is not None:
                    return f"[{k}]{err[0]}", err[1]
            return None

        return check_list
    if pa.types.is_struct(typ):
        fields, names = [(f.name, _checker(f.type)) for f in typ], set(typ.names)

        def check_struct(v: Any) -> tuple[str, str] | None:
            if v is None:
                return None
            if type(v) is not dict:
                return "", f"expected an object {{{', '.join(typ.names)}}}, got {describe_kind(v)} {describe_value(v)}"
            if not v.keys() <= names:
                unknown = ", ".join(map(str, v.keys() - names))
                return "", f"unknown key(s) {unknown} (expected {', '.join(typ.names)})"
            for name, chk in fields:
                if (err := chk(v.get(name))) is not None:
                    return f".{name}{err[0]}", err[1]
            return None

        return check_struct
    ok = (
        (lambda v: isinstance(v, str))
        if pa.types.is_string(typ)
        else (lambda v: isinstance(v, bool))
        if pa.types.is_boolean(typ)
        else (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool))
    )
    return lambda v: (
        None if v is None or ok(v) else ("", f"expected {_type_words(typ)}, got {describe_kind(v)} {describe_value(v)}")
    )


def _conform_table(table: pa.Table, path: Path) -> pa.Table:
    """An Arrow table cast to the loose schema; a column of another kind of type is a DataError."""
    n = table.num_rows
    cols = []
    for f in _LOOSE:
        if f.name not in table.column_names:
            if f.name in REQUIRED_FIELDS:
                raise DataError(
                    f"{path}: missing required column '{f.name}'; columns present: {', '.join(table.column_names)}"
                )
            empty = f.name == "context_messages"
            cols.append(pa.array([[] if empty else None] * n, f.type))
            continue
        col = table.column(f.name)
        if _kind_of(col.type) != _kind_of(f.type) and not pa.types.is_null(col.type):
            raise DataError(f"{path}: column '{f.name}' has type {col.type}, expected {f.type}")
        try:
            col = col.cast(f.type)
        except pa.ArrowException as err:
            raise DataError(f"{path}: column '{f.name}' does not convert to {f.type}: {err}") from None
        if f.name == "context_messages":
            col = pc.if_else(pc.is_null(col), pa.scalar([], f.type), col)  # null means no messages
        cols.append(col)
    return pa.Table.from_arrays(cols, schema=_LOOSE)


# --------------------------------------------------------------------------------- PLUS adapter


def _from_plus(src: _Source, pairs: tuple[str, ...], report: ReadReport) -> _Candidates:
    unknown_roles = [p for p in pairs if p not in PLUS_TRIPLES]
    if unknown_roles or not pairs:
        raise ValueError(f"plus_pairs: expected some of {', '.join(PLUS_TRIPLES)}, got {list(pairs)}")
    report.ignored_columns = [c for c in src.columns if c not in PLUS_KEYS]
    _warn_ignored(src.path, report.ignored_columns)
    if src.records is None:
        src.records = src.table.to_pylist()
    report.plus_stats = stats = PlusStats()
    return _from_records(src, lambda rec, i: plus_rows(rec, pairs, f"{src.path.stem}/{i}", stats))


# ------------------------------------------------------------------------------------- helpers


def _report_problems(path: Path, problems: dict[int, Problem], n: int, skip: bool, report: ReadReport) -> None:
    ordered = [problems[r] for r in sorted(problems)]
    if ordered and not skip:
        raise DataError(f"{path}: {ordered[0]}" + _more(len(ordered)), ordered)
    report.problems = ordered
    if ordered:
        log.warning("skipped %d bad rows of %d in %s (first: %s)", len(ordered), n, path, ordered[0])


def _more(n_bad: int) -> str:
    return f" [{n_bad - 1} more bad rows; skip_bad_rows=True skips them]" if n_bad > 1 else ""


def _warn_ignored(path: Path, columns: list[str]) -> None:
    if columns:
        log.warning("ignoring unknown columns in %s: %s", path, ", ".join(columns))


def _rename(path: str, names: dict[str, str]) -> str:
    """A field path with its column renamed to the source file's column ("prompt" -> "train_prompt")."""
    head = path.split("[")[0].split(".")[0]
    return names.get(head, head) + path[len(head) :]


def _strict(t: pa.Table) -> pa.Table:
    """The loose table, validated, cast to EXAMPLE_SCHEMA (non-null flags and metadata)."""
    return pa.Table.from_arrays([t.column(f.name).cast(f.type) for f in EXAMPLE_SCHEMA], schema=EXAMPLE_SCHEMA)


def _loosen(typ: pa.DataType) -> pa.DataType:
    if pa.types.is_list(typ):
        return pa.list_(_loosen(typ.value_type))
    if pa.types.is_struct(typ):
        return pa.struct([pa.field(f.name, _loosen(f.type)) for f in typ])
    return typ


def _kind_of(typ: pa.DataType) -> Any:
    """A type up to width and nullability: what a safe cast may change."""
    if pa.types.is_list(typ) or pa.types.is_large_list(typ):
        return ("list", _kind_of(typ.value_type))
    if pa.types.is_struct(typ):
        return ("struct", frozenset((f.name, _kind_of(f.type)) for f in typ))
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        return "string"
    if pa.types.is_floating(typ) or pa.types.is_integer(typ):
        return "number"
    return str(typ)


def _type_words(typ: pa.DataType) -> str:
    if pa.types.is_struct(typ):
        return "objects {" + ", ".join(f.name for f in typ) + "}"
    return {"string": "a string", "bool": "true/false", "double": "a number"}.get(str(typ), str(typ))


_LOOSE = pa.schema([pa.field(f.name, _loosen(f.type)) for f in EXAMPLE_SCHEMA])
_ROW_CHECKS = [(f.name, _checker(f.type)) for f in EXAMPLE_SCHEMA]
