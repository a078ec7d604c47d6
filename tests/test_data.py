"""Dataset loading: schema conformance, one DataError per kind of bad row, skipping, PLUS rows, splits."""

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlhf_cluster.data import (
    DataError,
    list_splits,
    read_examples,
    read_examples_with_report,
    read_split,
    split_path,
    write_examples,
)
from rlhf_cluster.plus_format import recover_pairs, to_plus_rows
from rlhf_cluster.sampling import draw_same_user_rows, same_user_pair_rows
from rlhf_cluster.schema import EXAMPLE_SCHEMA

PLUS_FIXTURE = Path(__file__).parent / "fixtures" / "plus_tiny.jsonl"


def pair(prompt="p", chosen="good", rejected="bad"):
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def row(i=0, **over):
    base = {
        "user_id": f"u{i}",
        "context": [pair(f"ctx {i}", "kind answer", "rude answer")],
        "prompt": f"question {i}",
        "chosen": f"helpful {i}",
        "rejected": f"unhelpful {i}",
    }
    base.update(over)
    return base


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# ------------------------------------------------------------------------------------ good rows


def test_jsonl_conforms_to_schema_with_defaults(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [row(0), row(1, topic="pets", contested=True, p_chosen=1)])
    table = read_examples(path)
    assert table.schema.equals(EXAMPLE_SCHEMA, check_metadata=True)
    assert table.column("context_messages").to_pylist() == [[], []]  # absent -> empty lists
    assert table.column("split").to_pylist() == [None, None]  # absent optional -> nulls
    assert table.column("p_chosen").to_pylist() == [None, 1.0]
    assert table.column("context").to_pylist()[1] == [pair("ctx 1", "kind answer", "rude answer")]


def test_parquet_and_jsonl_give_identical_tables(tmp_path):
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    rows = [row(0, context_messages=msgs, split="train"), row(1, context=[]), row(2, user_description="likes cats")]
    table = read_examples(write_jsonl(tmp_path / "src.jsonl", rows))
    a = read_examples(write_examples(table, tmp_path / "a.parquet"))
    b = read_examples(write_examples(table, tmp_path / "b.jsonl"))
    assert a.equals(table, check_metadata=True) and b.equals(table, check_metadata=True)


def test_json_array_file(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([row(0), row(1)]))
    assert read_examples(path).column("user_id").to_pylist() == ["u0", "u1"]


def test_limit_and_blank_lines(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [row(0), "", row(1), row(2), "{broken"])
    assert read_examples(path, limit=2).column("user_id").to_pylist() == ["u0", "u1"]


def test_empty_file_is_an_empty_table(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    assert read_examples(path).num_rows == 0


# ------------------------------------------------------------------------------------- bad rows

BAD_ROWS = {  # kind -> (row 1 of the file, field the message must name)
    "missing_field": ({k: v for k, v in row(1).items() if k != "prompt"}, "prompt"),
    "wrong_type": (row(1, prompt=3), "prompt"),
    "context_not_pairs": (row(1, context=["just text"]), "context[0]"),
    "context_pair_wrong_type": (row(1, context=[pair(chosen=7)]), "context[0].chosen"),
    "empty_text": (row(1, chosen="   "), "chosen"),
    "malformed_json": ('{"user_id": "u1", "prompt": ', "<json>"),
    "bad_role": (row(1, context_messages=[{"role": "robot", "content": "beep"}]), "context_messages[0].role"),
    "target_in_context": (row(1, context=[pair(), pair("question 1", "unhelpful 1", "helpful 1")]), "context[1]"),
    "chosen_equals_rejected": (row(1, chosen="same", rejected="same"), "chosen"),
}


@pytest.mark.parametrize("kind", sorted(BAD_ROWS))
def test_bad_row_names_file_row_and_field(tmp_path, kind):
    bad, field = BAD_ROWS[kind]
    path = write_jsonl(tmp_path / f"{kind}.jsonl", [row(0), bad, row(2)])
    with pytest.raises(DataError) as e:
        read_examples(path)
    msg = str(e.value)
    assert f"{kind}.jsonl" in msg and "row 1 (line 2)" in msg and f"field '{field}'" in msg, msg
    assert len(e.value.problems) == 1


def test_skip_bad_rows_skips_exactly_the_bad_ones(tmp_path, caplog):
    rows, good = [], []
    for i, (bad, _) in enumerate(BAD_ROWS.values()):
        rows += [row(100 + i), bad]
        good.append(f"u{100 + i}")
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="rlhf_cluster.data"):
        table, report = read_examples_with_report(path, skip_bad_rows=True)
    assert table.column("user_id").to_pylist() == good
    assert report.n_skipped == len(BAD_ROWS) and [p.row for p in report.problems] == list(range(1, len(rows), 2))
    assert f"skipped {len(BAD_ROWS)} bad rows of {len(rows)} in {path}" in caplog.text
    assert "first: row 1 (line 2) field" in caplog.text


def test_error_counts_the_other_bad_rows(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [row(0, prompt=""), row(1, prompt=""), row(2)])
    with pytest.raises(DataError, match=r"row 0 .* \[1 more bad rows; skip_bad_rows=True"):
        read_examples(path)


def test_missing_required_column_lists_the_present_ones(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{k: v for k, v in row(i).items() if k != "context"} for i in range(2)])
    with pytest.raises(DataError) as e:
        read_examples(path, skip_bad_rows=True)  # a whole-file problem is never skipped
    assert "x.jsonl" in str(e.value) and "missing required column(s) context" in str(e.value)
    assert "columns present: user_id, prompt, chosen, rejected" in str(e.value)


def test_parquet_values_are_checked_vectorized(tmp_path):
    table = read_examples(write_jsonl(tmp_path / "ok.jsonl", [row(0), row(1), row(2)]))
    bad = table.set_column(3, "prompt", pa.array(["q0", " ", "q2"]))
    pq.write_table(bad, tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad\.parquet: row 1 field 'prompt': is empty or whitespace-only"):
        read_examples(tmp_path / "bad.parquet")


def test_parquet_with_wrong_column_type_names_rows(tmp_path):
    columns = {
        "user_id": ["a", "b"],
        "context": [[], []],
        "prompt": [1, 2],
        "chosen": ["x", "x"],
        "rejected": ["y", "z"],
    }
    t = pa.table(columns)
    pq.write_table(t, tmp_path / "ints.parquet")
    with pytest.raises(DataError, match=r"ints\.parquet: row 0 field 'prompt': expected a string, got int"):
        read_examples(tmp_path / "ints.parquet")


def test_unknown_columns_are_ignored_with_a_notice(tmp_path, caplog):
    path = write_jsonl(tmp_path / "x.jsonl", [row(0, score=3, source="web")])
    with caplog.at_level(logging.WARNING, logger="rlhf_cluster.data"):
        table, report = read_examples_with_report(path)
    assert report.ignored_columns == ["score", "source"] and "score, source" in caplog.text
    assert table.schema.names == EXAMPLE_SCHEMA.names


def test_write_refuses_bad_tables(tmp_path):
    table = read_examples(write_jsonl(tmp_path / "ok.jsonl", [row(0)]))
    with pytest.raises(DataError, match="not in EXAMPLE_SCHEMA: extra"):
        write_examples(table.append_column("extra", pa.array([1])), tmp_path / "o.parquet")
    same = table.set_column(5, "rejected", table.column("chosen"))
    with pytest.raises(DataError, match=r"cannot write .*o\.parquet: row 0 field 'chosen': chosen == rejected"):
        write_examples(same, tmp_path / "o.parquet")
    assert not (tmp_path / "o.parquet").exists()


# ---------------------------------------------------------------------------------------- PLUS


def test_plus_fixture_maps_each_triple_to_a_row_and_holds_out_eval(caplog):
    with caplog.at_level(logging.WARNING, logger="rlhf_cluster.data"):
        table, report = read_examples_with_report(PLUS_FIXTURE)
    assert report.format == "plus" and report.ignored_columns == []
    # row 0: reward, train (eval held out); row 1: train == reward, emitted once
    assert report.plus_roles == ["reward", "train", "reward"]
    users = table.column("user_id").to_pylist()  # no user_id column: derived from the context
    assert users[0] == users[1] != users[2] and all(u.startswith("ctx-") and len(u) == 16 for u in users)
    assert table.column("prompt").to_pylist()[:2] == ["Tell me about a good pet.", "Which pet is best for a family?"]
    assert table.column("chosen")[0].as_py() == "Birds are cheerful, kind companions."
    # the context text's two blocks became pairs; the instruction and the system message are gone
    assert table.column("context")[0].as_py() == [
        pair("What pet should I get?", "A parrot: gentle and friendly.", "A guard dog that bites strangers."),
        pair("Which animal is calm?", "A cat that ignores you.", "A rabbit."),
    ]
    assert table.column("context_messages").to_pylist() == [[]] * 3
    assert "2 rows → 3 pairs (reward 2, train 1); context pairs recovered from text in 2 of 2 rows (3 pairs)" in (
        caplog.text
    )
    assert "ids derived from the context for 2 rows" in caplog.text


def test_plus_pairs_selects_triples():
    table, report = read_examples_with_report(PLUS_FIXTURE, plus_pairs=("eval",))
    assert report.plus_roles == ["eval"] and report.n_skipped == 0  # row 1 has no eval pair: not a bad row
    assert report.plus_stats.unselected_rows == 1
    assert table.column("prompt").to_pylist() == ["Describe an ideal companion animal."]
    all_three = read_examples_with_report(PLUS_FIXTURE, plus_pairs=("reward", "train", "eval"))[1]
    assert all_three.plus_roles == ["reward", "train", "eval", "reward"]


def test_plus_ids_are_one_per_person_across_files(tmp_path):
    rec = json.loads(PLUS_FIXTURE.read_text().splitlines()[0])
    a = read_examples(write_jsonl(tmp_path / "train.jsonl", [rec]))
    b = read_examples(write_jsonl(tmp_path / "validation.jsonl", [{"x": 1}, rec]), skip_bad_rows=True)
    assert set(a.column("user_id").to_pylist()) == set(b.column("user_id").to_pylist())
    given = read_examples(write_jsonl(tmp_path / "ids.jsonl", [{**rec, "user_id": 5}]))
    assert set(given.column("user_id").to_pylist()) == {"5"}


def test_recover_pairs_from_release_text():
    text = (
        "Question: Two\nlines?\nResponse A: a1\nResponse B: b1\nThe user preferred Response B.\n\n"
        "Question: q2\nResponse A: a2\nResponse B: b2\nThe user preferred Response A.\n\n"
        "Start your response with ##Summary"
    )
    assert recover_pairs(text) == [pair("Two\nlines?", "b1", "a1"), pair("q2", "a2", "b2")]
    assert recover_pairs("I like cats.\n\n" + text) is None  # other text: kept as a message
    assert recover_pairs("Start your response with ##Summary") is None


def test_our_rows_exported_as_plus_read_back_with_the_same_pairs(tmp_path):
    ctx = [pair("c1", "yes\nreally", "no"), pair("c2", "a", "b")]  # multi-line text, chosen as A then B
    rows = [row(k, user_id="ann", context=ctx, contested=True) for k in range(4)] + [row(9)]
    plus = to_plus_rows(rows)
    assert len(plus) == 3 and "user_id" not in plus[0] and "contested" not in plus[0]  # ann: 3 + 1 pairs; u9: 1
    assert plus[0]["context"].endswith("Start your response with ##Summary") and "eval_prompt" not in plus[1]
    path = write_jsonl(tmp_path / "train.jsonl", plus)
    reward_train = read_examples(path)
    held_out = read_examples(path, plus_pairs=("eval",))
    back = reward_train.to_pylist() + held_out.to_pylist()
    key = lambda r: (r["prompt"], r["chosen"], r["rejected"])  # noqa: E731
    assert sorted(map(key, back)) == sorted(map(key, rows))  # every pair once: none lost, none doubled
    assert held_out.column("prompt").to_pylist() == ["question 2"]
    for r in back:
        want = ctx if r["prompt"] != "question 9" else rows[-1]["context"]
        assert r["context"] == want and r["context_messages"] == [] and r["contested"] is None
    ann = {r["user_id"] for r in back if r["prompt"] != "question 9"}
    assert len(ann) == 1 and ann != {r["user_id"] for r in back if r["prompt"] == "question 9"}
    with pytest.raises(ValueError, match="user ann: rows with different contexts"):
        to_plus_rows([row(0, user_id="ann"), row(1, user_id="ann")])


def test_plus_text_that_is_not_pairs_is_kept_without_the_instruction(tmp_path):
    rec = {
        "context": "I like cats and short answers.\n\nStart your response with ##Summary",
        "reward_prompt": "q",
        "chosen": "x",
        "rejected": "y",
    }
    table, report = read_examples_with_report(write_jsonl(tmp_path / "p.jsonl", [rec]))
    msgs = table.column("context_messages")[0].as_py()
    assert msgs == [{"role": "user", "content": "I like cats and short answers."}]
    assert table.column("context")[0].as_py() == []
    stats = report.plus_stats
    assert (stats.text_context_rows, stats.recovered_rows, stats.instructions_stripped) == (1, 0, 1)


def test_plus_variants_convert(tmp_path):
    conversations = [[{"role": "user", "content": "a"}], [{"role": "assistant", "content": "b"}]]
    rows = [
        {"user_id": 7, "context": "past chats as text", "reward_prompt": "q", "chosen": "x", "rejected": "y"},
        {
            "context_messages": conversations,
            "train_prompt": [{"role": "user", "content": "q2"}],
            "train_chosen": [{"role": "user", "content": "q2"}, {"role": "assistant", "content": "x2"}],
            "train_rejected": "y2",
            "context": [pair("c", "d", "e")],
        },
    ]
    table = read_examples(write_jsonl(tmp_path / "p.jsonl", rows), format="plus")
    assert table.column("user_id").to_pylist()[0] == "7"
    assert table.column("user_id")[1].as_py().startswith("ctx-")  # no id: derived from its context
    assert table.column("context_messages")[0].as_py() == [{"role": "user", "content": "past chats as text"}]
    assert [m["content"] for m in table.column("context_messages")[1].as_py()] == ["a", "b"]
    assert table.column("prompt")[1].as_py() == "q2" and table.column("chosen")[1].as_py() == "x2"
    assert table.column("context")[1].as_py() == [pair("c", "d", "e")]


def test_plus_errors_name_the_plus_column(tmp_path):
    rows = [
        {
            "reward_prompt": "q",
            "chosen": "x",
            "rejected": "y",
            "train_prompt": "q",
            "train_chosen": "z",
            "train_rejected": "z",
        }
    ]
    with pytest.raises(DataError, match=r"p\.jsonl: row 0 \(line 1\) field 'train_chosen': chosen == rejected"):
        read_examples(write_jsonl(tmp_path / "p.jsonl", rows))


def test_format_plus_on_our_rows_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="not PLUS format: no column reward_prompt"):
        read_examples(write_jsonl(tmp_path / "x.jsonl", [row(0)]), format="plus")


# -------------------------------------------------------------------------------------- splits


def test_read_split_and_list_splits(tmp_path):
    table = read_examples(write_jsonl(tmp_path / "scratch.jsonl", [row(0)]))
    (tmp_path / "scratch.jsonl").unlink()
    write_examples(table, tmp_path / "train.parquet")
    write_examples(table, tmp_path / "validation.jsonl")
    (tmp_path / "ceilings.json").write_text("{}")  # metadata beside the splits is not a split
    assert list_splits(tmp_path) == ["train", "validation"]
    assert read_split(tmp_path, "validation").equals(table)
    assert split_path(tmp_path, "train").name == "train.parquet"
    with pytest.raises(DataError, match="no split 'test' in .*available splits: train, validation"):
        read_split(tmp_path, "test")
    with pytest.raises(DataError, match="does not exist"):
        list_splits(tmp_path / "nope")


# ------------------------------------------------------------------ PLUS reward-model pairs per user


def _pairs_table(rows):
    return pa.Table.from_pylist([{**row(0), "context_messages": [], **r} for r in rows], schema=EXAMPLE_SCHEMA)


def test_same_user_pair_rows_excludes_other_users_and_context_pairs():
    survey = [pair("s1", "a", "b")]
    t = _pairs_table(
        [
            {"user_id": "u", "context": survey, "prompt": "q0", "chosen": "c0", "rejected": "r0"},
            {"user_id": "v", "context": survey, "prompt": "q1", "chosen": "c1", "rejected": "r1"},
            {"user_id": "u", "context": survey, "prompt": "q2", "chosen": "c2", "rejected": "r2"},
            # same user, another context that contains row 0's target pair: row 0's pair is not its candidate
            {"user_id": "u", "context": [pair("q0", "c0", "r0")], "prompt": "q3", "chosen": "c3", "rejected": "r3"},
            # a target pair equal to a context pair of the survey rows: never their candidate
            {"user_id": "u", "context": [pair("q0", "c0", "r0")], "prompt": "s1", "chosen": "a", "rejected": "b"},
        ]
    )
    got = [c.tolist() for c in same_user_pair_rows(t)]
    assert got == [[0, 2, 3], [1], [0, 2, 3], [2, 3, 4], [2, 3, 4]]


def test_draw_same_user_rows_distinct_while_candidates_last():
    candidates = [np.array([0, 2, 3]), np.array([1]), np.array([0, 2, 3]), np.array([], dtype=np.int64)]
    rng = np.random.default_rng(0)
    rows = np.array([0, 0, 0, 1, 1, 3, 3])
    out = draw_same_user_rows(candidates, rows, rng)
    assert sorted(out[:3].tolist()) == [0, 2, 3]  # three summaries of row 0: three distinct pairs of its user
    assert out[3:5].tolist() == [1, 1]  # one candidate: repeated, not dropped
    assert out[5:].tolist() == [3, 3]  # no candidate: the row keeps its own pair
    again = draw_same_user_rows(candidates, rows, np.random.default_rng(0))
    assert again.tolist() == out.tolist()  # seeded: a resumed run draws the same rows


def test_plus_eval_pairs_are_a_split_of_their_own(tmp_path):
    (tmp_path / "train.jsonl").write_text(PLUS_FIXTURE.read_text())
    write_jsonl(tmp_path / "validation.jsonl", [row(0)])  # our format: no held-out split
    assert list_splits(tmp_path) == ["train", "train_eval", "validation"]
    assert read_split(tmp_path, "train_eval").column("prompt").to_pylist() == ["Describe an ideal companion animal."]
    assert "Describe an ideal companion animal." not in read_split(tmp_path, "train").column("prompt").to_pylist()
    write_jsonl(tmp_path / "train_eval.jsonl", [row(1)])  # a real file of that name wins
    assert read_split(tmp_path, "train_eval").column("prompt").to_pylist() == ["question 1"]
