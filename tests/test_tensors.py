"""Arrow list columns <-> padded torch tensors: padding and truncation sides, round trips, clear errors."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from rlhf_cluster.tensors import pad_list_column, tensor_to_list_array

IDS = pa.array([[1, 2, 3], [4], []], pa.list_(pa.int32()))


def test_right_padding():
    values, mask = pad_list_column(IDS, pad_value=0, side="right")
    assert values.dtype == torch.long and mask.dtype == torch.long
    assert values.tolist() == [[1, 2, 3], [4, 0, 0], [0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]


def test_left_padding_to_max_len():
    values, mask = pad_list_column(IDS, pad_value=-1, side="left", max_len=4)
    assert values.tolist() == [[-1, 1, 2, 3], [-1, -1, -1, 4], [-1, -1, -1, -1]]
    assert mask.tolist() == [[0, 1, 1, 1], [0, 0, 0, 1], [0, 0, 0, 0]]


@pytest.mark.parametrize(
    "truncate_side, side, expected",
    [
        ("left", "right", [[2, 3], [4, 0], [0, 0]]),  # keep the last tokens
        ("right", "right", [[1, 2], [4, 0], [0, 0]]),  # keep the first tokens
        ("left", "left", [[2, 3], [0, 4], [0, 0]]),
        ("right", "left", [[1, 2], [0, 4], [0, 0]]),
    ],
)
def test_truncation_sides(truncate_side, side, expected):
    values, mask = pad_list_column(IDS, 0, side=side, max_len=2, truncate_side=truncate_side)
    assert values.tolist() == expected
    assert mask.sum(dim=1).tolist() == [2, 1, 0]


def test_too_long_without_truncate_side_is_an_error():
    with pytest.raises(ValueError, match=r"input_ids: 1 rows are longer than max_len=2 \(row 0 has 3"):
        pad_list_column(IDS, 0, max_len=2, name="input_ids")


def test_float_logprobs_round_trip_with_left_padding():
    logprobs = pa.array([[-0.5, -1.25], [-2.0, -0.125, -3.5]], pa.list_(pa.float32()))
    values, mask = pad_list_column(logprobs, 0.0, side="left")
    assert values.dtype == torch.float32
    back = tensor_to_list_array(values, mask=mask)
    assert back.type == pa.list_(pa.float32()) and back.equals(logprobs)
    half = tensor_to_list_array(values.to(torch.bfloat16), lengths=[2, 3], side="left")
    assert half.to_pylist() == logprobs.to_pylist()  # these values are exact in bfloat16


def test_parquet_arrow_torch_arrow_round_trip(tmp_path):
    table = pa.table({"input_ids": pa.array([[5, 6, 7], [8], [9, 10], [], [11]], pa.list_(pa.int32()))})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=2)  # several chunks on read
    col = pq.read_table(tmp_path / "t.parquet").column("input_ids")
    assert col.num_chunks > 1
    for side in ("left", "right"):
        values, mask = pad_list_column(col, 0, side=side)
        assert tensor_to_list_array(values, mask=mask, value_type=pa.int32()).equals(table.column(0).chunk(0))
        lengths = mask.sum(dim=1)
        assert tensor_to_list_array(values, lengths=lengths, side=side).to_pylist() == col.to_pylist()


def test_sliced_input():
    values, _ = pad_list_column(IDS.slice(1), 0)
    assert values.tolist() == [[4], [0]]


def test_errors_name_the_column():
    with pytest.raises(TypeError, match=r"summary_text: expected list<int> or list<float>, got list<item: string>"):
        pad_list_column(pa.array([["a"]]), 0, name="summary_text")
    with pytest.raises(TypeError, match=r"ids: expected a list<int> or list<float> column, got int64"):
        pad_list_column(pa.array([1, 2]), 0, name="ids")
    with pytest.raises(ValueError, match="ids: the column has no rows"):
        pad_list_column(pa.array([], pa.list_(pa.int64())), 0, name="ids")
    with pytest.raises(ValueError, match="ids: row 1 is null"):
        pad_list_column(pa.array([[1], None]), 0, name="ids")
    with pytest.raises(TypeError, match="would round"):
        pad_list_column(pa.array([[0.5]]), 0, dtype=torch.long)
    with pytest.raises(ValueError, match="exactly one of mask= or lengths="):
        tensor_to_list_array(torch.zeros(2, 2))
