"""Hugging Face ``datasets`` folders and Parquet shard folders as splits, read with pyarrow alone.

``data.read_examples`` hands a directory here; the Arrow table that comes back goes through the same
validation as a Parquet file. Three kinds of directory are understood:

* ``Dataset.save_to_disk``: ``state.json``, ``dataset_info.json`` and ``data-XXXXX-of-YYYYY.arrow``
  shards, each an Arrow IPC *stream* (datasets' ``ArrowWriter`` uses ``pa.RecordBatchStreamWriter``).
  The shards are read in the order of ``state.json``'s ``_data_files``. ``datasets`` is not needed.
* ``DatasetDict.save_to_disk``: ``dataset_dict.json`` plus one ``save_to_disk`` folder per split. It is
  a data directory, not a split: its splits are its subdirectories (``data.list_splits`` lists them).
* a folder of ``*.parquet`` shards, read in name order and concatenated; all shards must have the same
  columns of the same types (a column that is all null in one shard may be typed null there), else a
  DataError names the first shard that differs.

In a data directory, ``<data_dir>/<split>/`` is a split when it is a ``save_to_disk`` folder or holds
``*.parquet`` files; other subdirectories are not splits. Row numbers in errors count rows across all
shards of the split (0-based, in read order); with several shards the message also names the shard
and the row inside it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from rlhf_cluster import data  # data imports this module too: use data.X at call time only

STATE_JSON = "state.json"  # datasets.config.DATASET_STATE_JSON_FILENAME
DATASET_DICT_JSON = "dataset_dict.json"  # datasets.config.DATASETDICT_JSON_FILENAME
EXPECTED = (
    "expected a datasets Dataset.save_to_disk folder (state.json + data-*.arrow) or a folder of *.parquet "
    "shards (a DatasetDict.save_to_disk folder, with dataset_dict.json, is a data directory of such splits)"
)

Shards = list[tuple[str, int]]  # (shard file name, its first row in the concatenated table)


def is_split_dir(d: Path) -> bool:
    """Whether ``d`` is a directory that reads as one split (save_to_disk folder or Parquet shards)."""
    return d.is_dir() and ((d / STATE_JSON).is_file() or any(_parquet_files(d)))


def dir_splits(data_dir: Path) -> list[str]:
    """Names of the subdirectories of ``data_dir`` that are splits (a DatasetDict save: all of its splits)."""
    return sorted(p.name for p in data_dir.iterdir() if not p.name.startswith(".") and is_split_dir(p))


def read_table(path: Path) -> tuple[pa.Table, Shards]:
    """The rows of a Parquet file or a split directory, and (directories) where each shard starts."""
    if not path.is_dir():
        return read_parquet(path), []
    if (path / STATE_JSON).is_file():
        return _concat(path, [(f, _read_stream(path, f)) for f in _state_files(path)])
    if (path / DATASET_DICT_JSON).is_file():
        splits = ", ".join(dir_splits(path)) or "none"
        raise data.DataError(
            f"{path}: a datasets DatasetDict (splits: {splits}), not one split; "
            f"use it as the data directory and read one of its splits (read_split(dir, split))"
        )
    files = _parquet_files(path)
    if not files:
        found = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
        shown = ", ".join(found[:8]) + (f" ... ({len(found)} entries)" if len(found) > 8 else "")
        raise data.DataError(f"{path}: not a dataset directory: {EXPECTED}; found {shown or 'nothing'}")
    return _concat(path, [(f.name, read_parquet(f)) for f in files])


def shard_note(shards: Shards, row: int) -> str:
    """`` (shard NAME, its row K)`` for a row of a table of several shards; empty otherwise."""
    if len(shards) < 2:
        return ""
    name, start = next((n, s) for n, s in reversed(shards) if s <= row)
    return f" (shard {name}, its row {row - start})"


def read_parquet(path: Path) -> pa.Table:
    try:
        return pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise data.DataError(f"{path}: not a readable Parquet file: {err}") from None


# ------------------------------------------------------------------------------------- helpers


def _parquet_files(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.suffix == ".parquet" and p.is_file())


def _state_files(d: Path) -> list[str]:
    """The data files of a save_to_disk folder, in ``state.json`` order."""
    try:
        state = json.loads((d / STATE_JSON).read_text(encoding="utf-8"))
        names = [entry["filename"] for entry in state["_data_files"]]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise data.DataError(f"{d / STATE_JSON}: not a datasets state.json (no _data_files list): {err!r}") from None
    if not names:
        raise data.DataError(f"{d / STATE_JSON}: lists no data files")
    missing = [n for n in names if not (d / n).is_file()]
    if missing:
        raise data.DataError(f"{d}: state.json lists data file(s) that are missing: {', '.join(missing)}")
    return names


def _read_stream(d: Path, name: str) -> pa.Table:
    try:
        with pa.OSFile(str(d / name)) as f:
            return pa.ipc.open_stream(f).read_all()
    except (pa.ArrowException, OSError) as err:
        raise data.DataError(f"{d / name}: not a readable Arrow stream (datasets save_to_disk shard): {err}") from None


def _concat(d: Path, parts: list[tuple[str, pa.Table]]) -> tuple[pa.Table, Shards]:
    """One table of the shards in order; a shard whose schema differs from the first is a DataError."""
    first_name, first = parts[0]
    shards, start = [], 0
    for name, table in parts:
        try:
            if sorted(table.column_names) != sorted(first.column_names):
                raise pa.ArrowInvalid("other columns")
            pa.unify_schemas([first.schema, table.schema])  # a null-typed (all-null) column fits any type
        except pa.ArrowException:
            raise data.DataError(
                f"{d}: shard {name} has schema ({_schema_words(table.schema)}) but {first_name} has "
                f"({_schema_words(first.schema)}); all shards of a split must share one schema"
            ) from None
        shards.append((name, start))
        start += table.num_rows
    tables = [t.replace_schema_metadata(None) for _, t in parts]
    return pa.concat_tables(tables, promote_options="default"), shards


def _schema_words(schema: pa.Schema) -> str:
    return ", ".join(f"{f.name}: {f.type}" for f in schema)
