"""The endpoint's OpenAPI document is true (issue 17, defect 5), checked by a conformance tool, not by hand:
schemathesis generates requests from the document — valid ones, and invalid ones for each declared
constraint — against the real FastAPI app (auth, body guard, validation, routes, error replies) on the
stand-in service of test_serve.py, and checks every reply against the document: no 5xx, each status code
documented, its body of the declared schema and media type, schema-valid requests accepted and invalid
ones rejected, unsupported methods answered 405."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from test_serve import LIMITS, TOKEN, StandInService

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def api_schema(tmp_path):
    from deploy.api import ApiSettings, build_api
    from rlhf_cluster.serve_config import ServeLimits
    from rlhf_cluster.summary_store import SummaryStore

    app = build_api(StandInService(SummaryStore(tmp_path / "s.sqlite")), ApiSettings(TOKEN, ServeLimits(**LIMITS)))
    return schemathesis.openapi.from_asgi("/openapi.json", app, headers=AUTH)


EXAMPLES = 30  # generated requests per operation and mode


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_every_reply_conforms_to_the_openapi_document(api_schema, mode):
    """Every operation, EXAMPLES generated requests each (schemathesis's default checks on each reply);
    all failures are collected and shown together. (Driven through hypothesis directly: schemathesis's
    pytest plugin does not load under this pytest.)"""
    from schemathesis.generation import GenerationMode

    failures: dict[str, set[str]] = {}
    operations = [op.ok() for op in api_schema.get_all_operations()]
    assert len(operations) >= 8, [f"{op.method} {op.path}" for op in operations]
    for op in operations:

        @given(case=op.as_strategy(generation_mode=GenerationMode(mode)))
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            try:
                case.call_and_validate(headers=AUTH)
            except AssertionError as err:  # schemathesis's failures (one, or a group of them)
                where = f"{case.operation.method.upper()} {case.operation.path}"
                failures.setdefault(where, set()).add(" ".join(str(err).split())[:300])

        try:
            check()
        except Unsatisfiable:  # nothing to get wrong: GET /healthz, GET /readyz take no input
            assert mode == "negative" and op.path in ("/healthz", "/readyz"), op.path
    assert not failures, "\n".join(f"{k}: {sorted(v)[:3]}" for k, v in failures.items())


def test_unsupported_methods_are_405_not_415():
    from fastapi.testclient import TestClient

    from deploy.api import ApiSettings, build_api
    from rlhf_cluster.serve_config import ServeLimits

    app = build_api(StandInService(None), ApiSettings(TOKEN, ServeLimits(**LIMITS)))
    client = TestClient(app, headers=AUTH)
    assert client.put("/healthz", content=b"x").status_code == 405
    assert client.patch("/v1/rewards", content=b"x").status_code == 405
    assert client.put("/v1/rewards", json={}).status_code == 405


def test_the_document_states_the_body_rules_and_errors(api_schema):
    """What the validators enforce is in the document too (the conformance run relies on it)."""
    doc = api_schema.raw_schema
    bodies = doc["components"]["schemas"]
    assert [set(b.get("required", [])) for b in bodies["RewardsRequest"]["oneOf"][:2]] == [{"user_id"}, {"summary"}]
    assert "anyOf" in bodies["SummarizeRequest"]
    assert bodies["SetSummaryRequest"]["properties"]["summary"]["pattern"].startswith("[^\\u0000-\\u0020")
    rewards = doc["paths"]["/v1/rewards"]["post"]["responses"]
    assert {"400", "401", "404", "408", "413", "415", "422", "431", "503"} <= set(rewards)
    assert rewards["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorOut")
