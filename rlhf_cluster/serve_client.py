"""Python client of the personalized reward endpoint (deploy/serve.py), e.g. as a remote reward in a job.

    from rlhf_cluster.serve_client import ServeClient

    client = ServeClient("http://127.0.0.1:8000")            # token from $RLHF_SERVE_TOKEN
    client.set_summary("u1", "Prefers short answers about cats.")
    client.rewards("Which pet?", ["A cat.", "A dog."], user_id="u1")          # → [r_a, r_b]
    client.compare("Which pet?", "A cat.", "A dog.", summary="likes dogs")   # → P(first preferred)
    client.summarize(context=[{"prompt": ..., "chosen": ..., "rejected": ...}], user_id="u2")

Conditioning: exactly one of ``user_id`` (its stored summary), ``summary`` (a text) or ``context`` /
``context_messages`` (the user's history, summarized by the endpoint's summarizer) — the same fields as
a row of the example schema. A request the endpoint refuses raises ``ServeRequestError`` carrying the
status and the server's message (which names the field); an unreachable endpoint raises
``ServeUnavailable``. One ``requests.Session`` per client keeps connections alive; use one client per
thread.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import requests

DEFAULT_TOKEN_ENV = "RLHF_SERVE_TOKEN"


class ServeError(RuntimeError):
    """Any failure talking to the endpoint."""


class ServeUnavailable(ServeError):
    """The endpoint could not be reached (connection refused, timeout)."""


class ServeRequestError(ServeError):
    """The endpoint answered with an error status; ``status`` and ``detail`` are the server's."""

    def __init__(self, method: str, path: str, status: int, detail: str, body: Any = None, retry_after=None):
        super().__init__(f"{method} {path} → {status}: {detail}")
        self.status, self.detail, self.body = status, detail, body
        self.retry_after: float | None = retry_after  # seconds, from a 503's Retry-After header


class RewardUnavailable(ServeError):
    """A reward that could not be computed (the endpoint stayed unreachable or kept answering 5xx/408/429
    through every retry, or answered a reward that is not a finite number): a training job stops on it
    rather than train on a made-up number."""


TRANSIENT_STATUSES = frozenset({408, 429, 502, 503, 504})  # worth retrying; any other 4xx is the caller's bug


class ServeClient:
    """Calls of the HTTP API, one method per route; see the module docstring."""

    def __init__(self, url: str, token: str | None = None, timeout_s: float = 60.0, token_env: str = DEFAULT_TOKEN_ENV):
        self.url = url.rstrip("/")
        token = token if token is not None else os.environ.get(token_env)
        if not token:
            raise ServeError(f"no API token: pass token= or set ${token_env}")
        self.timeout_s = timeout_s
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"

    # --------------------------------------------------------------------------------- summaries

    def summarize(
        self,
        context: Sequence[Mapping[str, str]] = (),
        context_messages: Sequence[Mapping[str, str]] = (),
        user_id: str | None = None,
        max_context_pairs: int | None = None,
    ) -> str:
        """The summarizer's summary of a user's history; stored for ``user_id`` when given."""
        body = {
            "context": list(context),
            "context_messages": list(context_messages),
            "user_id": user_id,
            "max_context_pairs": max_context_pairs,
        }
        return self._call("POST", "/v1/summaries", _without_none(body))["summary"]

    def set_summary(self, user_id: str, summary: str) -> dict:
        """Store a user-written summary; returns {user_id, summary, source, updated_at}."""
        return self._call("PUT", f"/v1/users/{_path_id(user_id)}/summary", {"summary": summary})

    def get_summary(self, user_id: str) -> dict | None:
        """{user_id, summary, source, updated_at}, or None when the user has no stored summary."""
        try:
            return self._call("GET", f"/v1/users/{_path_id(user_id)}/summary")
        except ServeRequestError as err:
            if _no_stored_summary(err):
                return None
            raise

    def delete_summary(self, user_id: str) -> bool:
        """Remove the user's stored summary; False when there was none."""
        try:
            self._call("DELETE", f"/v1/users/{_path_id(user_id)}/summary")
            return True
        except ServeRequestError as err:
            if _no_stored_summary(err):
                return False
            raise

    # ----------------------------------------------------------------------------------- rewards

    def rewards(
        self,
        prompt: str,
        responses: Sequence[str],
        *,
        user_id: str | None = None,
        summary: str | None = None,
        context: Sequence[Mapping[str, str]] | None = None,
        context_messages: Sequence[Mapping[str, str]] | None = None,
    ) -> list[float]:
        """One reward per response, conditioned on exactly one of user_id, summary or context."""
        body = {
            "prompt": prompt,
            "responses": list(responses),
            **_conditioning(user_id, summary, context, context_messages),
        }
        return self._call("POST", "/v1/rewards", body)["rewards"]

    def compare(
        self,
        prompt: str,
        response_a: str,
        response_b: str,
        *,
        user_id: str | None = None,
        summary: str | None = None,
        context: Sequence[Mapping[str, str]] | None = None,
        context_messages: Sequence[Mapping[str, str]] | None = None,
    ) -> float:
        """P(the user prefers response_a over response_b) = σ(r_a − r_b)."""
        body = {
            "prompt": prompt,
            "response_a": response_a,
            "response_b": response_b,
            **_conditioning(user_id, summary, context, context_messages),
        }
        return self._call("POST", "/v1/compare", body)["p_a"]

    def health(self) -> dict:
        return self._call("GET", "/healthz")

    # ------------------------------------------------------------------------------------- plumbing

    def _call(self, method: str, path: str, body: dict | None = None) -> Any:
        try:
            resp = self.session.request(method, self.url + path, json=body, timeout=self.timeout_s)
        except requests.RequestException as err:
            raise ServeUnavailable(f"{method} {self.url}{path}: {type(err).__name__}: {err}") from err
        if resp.status_code >= 400:
            try:
                payload = resp.json()
                detail = payload.get("detail", resp.text) if isinstance(payload, dict) else resp.text
            except ValueError:
                payload, detail = None, resp.text[:500] or resp.reason
            retry_after = resp.headers.get("Retry-After", "")
            retry_after = float(retry_after) if retry_after.replace(".", "", 1).isdigit() else None
            raise ServeRequestError(method, path, resp.status_code, str(detail), payload, retry_after)
        return resp.json() if resp.content else None

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> ServeClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _conditioning(user_id, summary, context, context_messages) -> dict:
    """The request's conditioning fields; the server checks that exactly one kind is given."""
    return _without_none(
        {
            "user_id": user_id,
            "summary": summary,
            "context": list(context) if context is not None else None,
            "context_messages": list(context_messages) if context_messages is not None else None,
        }
    )


def _no_stored_summary(err: ServeRequestError) -> bool:
    """The endpoint's 404 for a user without a summary (not a 404 for a path that matches no route)."""
    return err.status == 404 and isinstance(err.body, dict) and err.body.get("field") == "user_id"


def _without_none(body: dict) -> dict:
    return {k: v for k, v in body.items() if v is not None}


def _path_id(user_id: str) -> str:
    """The user id as a path segment: quoted, so '/' or '..' cannot reach another route."""
    return requests.utils.quote(user_id, safe="")


class ServedRewards:
    """A reward scorer backed by a running endpoint (stage 2 with ``reward=serve``): the same ``rewards``
    call as ``RewardModelGroup``. Rows that share a prompt and a conditioning text go in one request
    (the conditioning as the summary; rows without one are refused: the served model reads a summary)."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        timeout_s: float = 60.0,
        max_responses: int = 16,
        attempts: int = 5,
        max_wait_s: float = 10.0,
    ):
        self.client = ServeClient(url, token=token, timeout_s=timeout_s)
        self.max_responses, self.attempts, self.max_wait_s = max_responses, attempts, max_wait_s

    def rewards(self, batch):
        import pyarrow as pa

        from rlhf_cluster.schema import RESPONSE_REWARD_SCHEMA, RESPONSE_SCHEMA, check_batch

        check_batch(batch, RESPONSE_SCHEMA, "ServedRewards.rewards")
        rows = batch.to_pylist()
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(rows):
            if not r["conditioning"]:
                raise ValueError(f"ServedRewards: row {i} (user {r['user_id']!r}) has no conditioning text to send")
            groups.setdefault((r["prompt"], r["conditioning"]), []).append(i)
        out = [0.0] * len(rows)
        for (prompt, summary), idx in groups.items():
            for start in range(0, len(idx), self.max_responses):  # the endpoint's limits.max_responses
                part = idx[start : start + self.max_responses]
                for i, value in zip(part, self.rewards_of(prompt, summary, [rows[i]["response"] for i in part])):
                    out[i] = value
        return pa.Table.from_arrays(
            [batch.column("user_id"), pa.array(out, pa.float32())], schema=RESPONSE_REWARD_SCHEMA
        )

    def rewards_of(self, prompt: str, summary: str, responses: list[str]) -> list[float]:
        """The endpoint's rewards, retried (``attempts`` in all) while it is unreachable or answers a transient
        status (TRANSIENT_STATUSES), waiting its Retry-After (else 1, 2, 4 … s; at most ``max_wait_s``);
        then RewardUnavailable. A reward that is not a finite number is never returned."""
        where = f"reward from {self.client.url}"
        for attempt in range(1, self.attempts + 1):
            try:
                values = self.client.rewards(prompt, responses, summary=summary)
            except (ServeUnavailable, ServeRequestError) as err:
                transient = isinstance(err, ServeUnavailable) or err.status in TRANSIENT_STATUSES
                if not transient or attempt == self.attempts:
                    tried = f"after {attempt} attempt{'s' if attempt > 1 else ''}"
                    raise RewardUnavailable(f"{where} failed {tried}: {err}") from err
                wait = getattr(err, "retry_after", None) or 2.0 ** (attempt - 1)
                wait = min(wait, self.max_wait_s)
                print(f"notice: {where}: {err}; retry {attempt}/{self.attempts - 1} in {wait:g} s", file=sys.stderr)
                time.sleep(wait)
                continue
            if len(values) != len(responses) or not all(
                isinstance(v, float | int) and math.isfinite(v) for v in values
            ):
                raise RewardUnavailable(f"{where}: not one finite reward per response: {str(values)[:200]}")
            return values
        raise AssertionError("unreachable")

    def shutdown(self) -> None:
        self.client.close()
