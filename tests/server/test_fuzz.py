"""Schemathesis against a real server on a local port (tiny model), from the server's own OpenAPI schema.

Every operation, schema-valid and schema-breaking bodies, with and without the API key, and stateful sequences.

The contract (`benchmarks.reliability.fuzz.contract_violation`): no 5xx, every 4xx an OpenAI-style error body, every
stream ending in ``data: [DONE]``. A few hundred cases here; ``python -m benchmarks reliability fuzz`` runs more.
"""

from __future__ import annotations

import json

import httpx
import pytest
from servers import make_tiny_compressor, serving

pytest.importorskip("schemathesis", reason="schemathesis is in the dev extra")

from benchmarks.reliability.fuzz import FuzzTally, contract_violation, fuzz_operations, fuzz_stateful  # noqa: E402

pytestmark = pytest.mark.timeout(600)

KEY = "fuzz-key"


@pytest.fixture(scope="module")
def compressor():
    return make_tiny_compressor()


def assert_clean(tally: FuzzTally) -> None:
    summary = tally.summary()
    assert summary["failures"] == 0, json.dumps(summary["failure_examples"], indent=1, default=str)[:4000]


def test_every_operation_without_a_key(compressor):
    with serving(compressor) as server:
        tally = fuzz_operations(server.url, examples=30, seed=1)
        fuzz_stateful(server.url, examples=8, steps=4, seed=1, tally=tally)
    assert_clean(tally)
    operations = {label.split(" [")[0] for label in tally.by_operation}
    assert {"GET /health", "GET /v1/models", "POST /v1/chat/completions", "POST /v1/compress"} <= operations
    assert any("[stateful]" in label for label in tally.by_operation)
    assert tally.statuses[200] > 0 and tally.cases >= 200


def test_every_operation_with_a_key_sent_and_not(compressor):
    with serving(compressor, api_key=KEY) as server:
        tally = fuzz_operations(server.url, api_key=KEY, examples=15, seed=2)
        unauthorised = fuzz_operations(server.url, api_key=KEY, send_key=False, examples=5, seed=2)
        fuzz_stateful(server.url, api_key=KEY, examples=5, steps=4, seed=2, tally=tally)
    assert_clean(tally)
    assert_clean(unauthorised)
    assert tally.statuses[401] == 0
    # Without the key every path but /health answers 401 (and /health still 200).
    for label, count in unauthorised.by_operation.items():
        assert count > 0, label
    assert set(unauthorised.statuses) == {200, 401}
    assert unauthorised.statuses[200] == unauthorised.by_operation["GET /health [positive, no key]"]


def test_the_schema_documents_the_error_shape(compressor):
    with serving(compressor, api_key=KEY) as server:
        schema = httpx.get(server.url + "/openapi.json", headers={"Authorization": f"Bearer {KEY}"}).json()
    chat = schema["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert {"400", "401", "404", "413", "422", "429", "504"} <= set(chat)
    assert "text/event-stream" in chat["200"]["content"]
    error = schema["components"]["schemas"]["ErrorDetail"]
    assert set(error["properties"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    ("status", "content_type", "text", "bad"),
    [
        (500, "application/json", '{"error": {"message": "x", "type": "t", "param": null, "code": null}}', True),
        (422, "application/json", '{"detail": [{"loc": ["body"]}]}', True),
        (400, "application/json", '{"error": {"message": "", "type": "t", "param": null, "code": null}}', True),
        (404, "text/plain", "Not Found", True),
        (200, "text/event-stream", 'data: {"choices": []}\n\n', True),
        (200, "text/event-stream", 'data: {"error": {"message": "m"}}\n\ndata: [DONE]\n\n', True),
        (401, "application/json", '{"error": {"message": "m", "type": "t", "param": null, "code": "c"}}', False),
        (200, "text/event-stream", 'data: {"choices": []}\n\ndata: [DONE]\n\n', False),
        # A request past its own deadline (its `timeout`) gets the 504 it asked for; any other 5xx is a fault.
        (
            504,
            "application/json",
            '{"error": {"message": "m", "type": "t", "param": "timeout", "code": "timeout"}}',
            False,
        ),
        (504, "application/json", '{"error": {"message": "", "type": "t", "param": null, "code": "timeout"}}', True),
        (504, "application/json", '{"error": {"message": "m", "type": "t", "param": null, "code": null}}', True),
    ],
)
def test_the_contract_check_catches_what_it_must(status, content_type, text, bad):
    assert (contract_violation(status, content_type, text) is not None) is bad
