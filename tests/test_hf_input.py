"""Hugging Face ``datasets`` folders and Parquet shard folders read as splits, through the same validation."""

import json
import subprocess
import sys

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_data import row as data_row

from rlhf_cluster.data import DataError, list_splits, read_examples, read_split, split_path, write_examples

datasets.disable_progress_bars()

MSGS = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


def row(i=0, **over):
    """test_data's row, with messages on odd rows and a topic on rows not divisible by 3 (nulls elsewhere)."""
    return data_row(i, **{"context_messages": MSGS if i % 2 else None, "topic": "pets" if i % 3 else None, **over})


def write_shards(folder, *shards, name="part-{k}.parquet"):
    folder.mkdir(parents=True)
    for k, rows in reversed(list(enumerate(shards))):  # written last-first: order is by name, not by age
        pq.write_table(pa.Table.from_pylist(rows), folder / name.format(k=k))
    return folder


def test_save_to_disk_reads_like_the_same_rows_in_jsonl(tmp_path):
    rows = [row(i) for i in range(5)] + [row(5, context=[])]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "hf" / "train"), num_shards=2)
    state = json.loads((tmp_path / "hf" / "train" / "state.json").read_text())
    assert [f["filename"] for f in state["_data_files"]] == ["data-00000-of-00002.arrow", "data-00001-of-00002.arrow"]
    write_examples(pa.Table.from_pylist(rows), tmp_path / "files" / "train.jsonl")
    got = read_split(tmp_path / "hf", "train")
    assert got.equals(read_split(tmp_path / "files", "train"), check_metadata=True)
    assert got.column("user_id").to_pylist() == [f"u{i}" for i in range(6)]
    assert split_path(tmp_path / "hf", "train") == tmp_path / "hf" / "train"
    assert read_split(tmp_path / "hf", "train", limit=4).num_rows == 4


def test_bad_row_in_a_save_to_disk_shard_names_the_shard(tmp_path):
    rows = [row(0), row(1), row(2), row(3, rejected="helpful 3")]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "train"), num_shards=2)
    with pytest.raises(
        DataError, match=r"row 3 field 'chosen': chosen == rejected.*\(shard data-00001-of-00002\.arrow, its row 1\)"
    ):
        read_split(tmp_path, "train")


def test_dataset_dict_is_a_data_directory_of_its_splits(tmp_path):
    dd = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list([row(0), row(1)]), "validation": datasets.Dataset.from_list([row(2)])}
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    assert list_splits(tmp_path / "dd") == ["train", "validation"]
    assert read_split(tmp_path / "dd", "validation").column("user_id").to_pylist() == ["u2"]
    with pytest.raises(DataError, match=r"a datasets DatasetDict \(splits: train, validation\), not one split"):
        read_examples(tmp_path / "dd")


def test_parquet_shards_concatenate_in_name_order(tmp_path):
    write_shards(tmp_path / "train", [row(0), row(1)], [row(2)], [row(3), row(4)])
    table = read_split(tmp_path, "train")
    assert table.column("user_id").to_pylist() == ["u0", "u1", "u2", "u3", "u4"]
    assert table.column("context_messages").to_pylist()[:2] == [[], MSGS]


def test_bad_row_in_second_parquet_shard_names_shard_row_and_field(tmp_path):
    write_shards(tmp_path / "train", [row(0), row(1)], [row(2), row(3, chosen="  ")])
    with pytest.raises(DataError) as err:
        read_split(tmp_path, "train")
    msg = str(err.value)
    assert msg.startswith(f"{tmp_path / 'train'}: row 3 field 'chosen': is empty or whitespace-only"), msg
    assert "(shard part-1.parquet, its row 1)" in msg
    assert [p.row for p in err.value.problems] == [3]
    kept = read_split(tmp_path, "train", skip_bad_rows=True)
    assert kept.column("user_id").to_pylist() == ["u0", "u1", "u2"]


def test_parquet_shards_with_different_schemas_name_the_shard(tmp_path):
    write_shards(tmp_path / "train", [row(1)], [row(2, topic=7)])  # string vs int64
    with pytest.raises(DataError, match=r"shard part-1\.parquet has schema .*topic: int64.* but part-0\.parquet"):
        read_split(tmp_path, "train")
    extra = {**row(4), "score": 1.0}
    write_shards(tmp_path / "other", [row(3)], [extra])  # other columns
    with pytest.raises(DataError, match=r"shard part-1\.parquet has schema .*score: double.*share one schema"):
        read_split(tmp_path, "other")


def test_unrelated_directory_says_what_was_expected(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hello")
    with pytest.raises(DataError, match=r"notes: not a dataset directory: expected a datasets Dataset\.save_to_disk"):
        read_examples(tmp_path / "notes")
    with pytest.raises(DataError, match=r"no split 'notes' .*notes/\); available splits: none"):
        read_split(tmp_path, "notes")  # an unrelated folder is not a split


def test_list_splits_includes_split_folders(tmp_path):
    write_examples(pa.Table.from_pylist([row(0)]), tmp_path / "train.jsonl")
    write_shards(tmp_path / "validation", [row(1)])
    datasets.Dataset.from_list([row(2)]).save_to_disk(str(tmp_path / "test"))
    (tmp_path / "runs").mkdir()  # not a split
    (tmp_path / "ceilings.json").write_text("{}")
    assert list_splits(tmp_path) == ["test", "train", "validation"]
    assert {s: read_split(tmp_path, s).num_rows for s in list_splits(tmp_path)} == {
        "test": 1,
        "train": 1,
        "validation": 1,
    }
    write_shards(tmp_path / "train", [row(3)])
    with pytest.raises(DataError, match="split 'train' is ambiguous"):
        read_split(tmp_path, "train")


def test_reading_needs_pyarrow_only(tmp_path):
    datasets.Dataset.from_list([row(0), row(1)]).save_to_disk(str(tmp_path / "train"))
    code = (
        "import sys; import rlhf_cluster.hf_input; from rlhf_cluster.data import read_split; "
        f"assert read_split({str(tmp_path)!r}, 'train').num_rows == 2; assert 'datasets' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
