"""Progress output: plain periodic lines when the stream is not a terminal (logs, CI), silent when disabled."""

from __future__ import annotations

import io

from rlhf_cluster.progress import PlainProgress, progress


def test_plain_lines_every_tenth_and_at_the_end_with_postfix():
    out = io.StringIO()
    bar = progress(range(25), desc="train", unit="step", stream=out)
    assert isinstance(bar, PlainProgress)
    for i in bar:
        bar.set_postfix(loss=f"{i:.1f}")
    lines = out.getvalue().splitlines()
    # every 25 // 10 = 2 items, and the last: 12 lines + 1
    assert len(lines) == 13
    assert lines[0].startswith("train: 2/25 step (") and lines[0].endswith(" loss=1.0")
    assert lines[-1].startswith("train: 25/25 step (") and lines[-1].endswith(" loss=24.0")


def test_unknown_total_prints_every_hundred_and_disabled_prints_nothing():
    out = io.StringIO()
    assert list(progress(iter(range(250)), desc="gen", stream=out)) == list(range(250))
    assert [line.split(" ")[1] for line in out.getvalue().splitlines()] == ["100", "200"]
    quiet = io.StringIO()
    assert list(progress(range(5), desc="x", disable=True, stream=quiet)) == list(range(5))
    assert quiet.getvalue() == ""
