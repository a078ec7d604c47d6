"""The fixed reward of the GRPO side-by-side (ours vs TRL): a pure function of the summary text.

Both sides import this file (ours in .venv, TRL in its own environment), so the reward — and so the
advantages, up to sampling — are computed by the same code. No torch, no project imports: the TRL
environment has neither our package nor its dependencies.
"""

from __future__ import annotations

import re

# Words of the `pets` world a useful summary would name: kinds, and the attributes users weigh.
KEYWORDS = ("dog", "cat", "bird", "rabbit", "helpful", "harmless", "safe", "useful", "prefers", "likes")
_WORD = re.compile(r"[a-z]+")


def text_reward(text: str) -> float:
    """Share of the summary's words that are keywords, minus a small penalty per word beyond 12, in [−1, 1]."""
    words = _WORD.findall(text.lower())
    if not words:
        return 0.0
    hits = sum(w in KEYWORDS for w in words)
    return max(-1.0, hits / len(words) - 0.02 * max(0, len(words) - 12))


def trl_reward(completions, **_) -> list[float]:
    """TRL reward-function signature: ``completions`` are strings, or message lists for chat prompts."""
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [text_reward(t) for t in texts]
