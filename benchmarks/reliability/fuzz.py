"""Schema-driven fuzzing of a running server with schemathesis.

Every operation, with and without the API key, and stateful sequences along the schema's links (schemathesis
infers them from the responses, e.g. ``/v1/models`` ids into ``/v1/models/{model}``).

The contract checked on every response: no status 5xx but the 504 of a request that ran past its own deadline
(its ``timeout`` field, which the fuzzer may set tiny: code ``"timeout"``, the answer the client asked for); every
4xx (and that 504) an OpenAI-style error body ``{"error": {"message", "type", "param", "code"}}`` with a non-empty
message; a stream ends with ``data: [DONE]``
and any error event in it has the same shape. Failures are collected, not raised, so one run counts them all.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ..common import RESULTS_DIR, machine_description, write_json

ERROR_FIELDS = {"message", "type", "param", "code"}
REQUEST_TIMEOUT = 120.0


def contract_violation(status: int, content_type: str, text: str) -> str | None:
    """Why a response breaks the server's error contract, or ``None`` when it keeps it."""
    if status == 504 and _error_code(text) == "timeout":  # past the request's own deadline: asked for, not a fault
        return error_body_problem(text)
    if status >= 500:
        return f"status {status}: {text[:300]}"
    if 400 <= status < 500:
        return error_body_problem(text)
    if status == 200 and content_type.startswith("text/event-stream"):
        events = [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]
        if not events or events[-1] != "[DONE]":
            return "a stream did not end with data: [DONE]"
        for event in events[:-1]:
            payload = json.loads(event)
            if "error" in payload:
                problem = error_body_problem(event)
                if problem:
                    return f"stream error event: {problem}"
    return None


def _error_code(text: str) -> Any:
    try:
        body = json.loads(text)
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return error.get("code") if isinstance(error, dict) else None


def error_body_problem(text: str) -> str | None:
    try:
        body = json.loads(text)
    except ValueError:
        return f"4xx body is not JSON: {text[:200]!r}"
    if not isinstance(body, dict) or set(body) != {"error"} or not isinstance(body["error"], dict):
        return f"4xx body is not {{'error': {{...}}}}: {text[:200]!r}"
    error = body["error"]
    if set(error) != ERROR_FIELDS:
        return f"error fields are {sorted(error)}, not {sorted(ERROR_FIELDS)}"
    if (
        not isinstance(error["message"], str)
        or not error["message"].strip()
        or "Traceback (most recent call last)" in error["message"]
    ):
        return f"error message is empty or a traceback: {error['message']!r}"
    if not isinstance(error["type"], str):
        return f"error type is not a string: {error['type']!r}"
    return None


@dataclass
class FuzzTally:
    """Counts of one fuzz run: cases sent, statuses seen, and every contract violation with its request."""

    cases: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    by_operation: Counter[str] = field(default_factory=Counter)
    failures: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def record(self, label: str, method: str, path: str, body: Any, response: Any) -> None:
        self.cases += 1
        self.by_operation[label] += 1
        self.statuses[response.status_code] += 1
        content_type = response.headers.get("content-type") or ""
        if isinstance(content_type, list):  # schemathesis' responses keep every value of a header
            content_type = content_type[0] if content_type else ""
        problem = contract_violation(response.status_code, content_type, response.text)
        if problem:
            self.failures.append({"operation": label, "method": method, "path": path, "body": body, "problem": problem})

    def summary(self) -> dict[str, Any]:
        return {
            "cases": self.cases,
            "failures": len(self.failures),
            "5xx": sum(count for status, count in self.statuses.items() if status >= 500),
            "statuses": {str(status): count for status, count in sorted(self.statuses.items())},
            "by_operation": dict(sorted(self.by_operation.items())),
            "no_cases": sorted(set(self.skipped)),
            "failure_examples": self.failures[:10],
        }


def load_schema(url: str, api_key: str | None = None, *, send_key: bool = True) -> Any:
    """The server's own OpenAPI schema (``/openapi.json``) as a schemathesis schema aimed at ``url``.

    The schema is read with ``api_key``; its calls carry the key only with ``send_key``.
    """
    import schemathesis

    headers = auth_headers(api_key)
    raw = httpx.get(url + "/openapi.json", headers=headers, timeout=REQUEST_TIMEOUT).raise_for_status().json()
    schema = schemathesis.openapi.from_dict(raw)
    schema.config.update(
        base_url=url, headers=headers if send_key and headers else None, request_timeout=REQUEST_TIMEOUT
    )
    return schema


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def fuzz_operations(
    url: str,
    *,
    api_key: str | None = None,
    send_key: bool = True,
    examples: int = 25,
    modes: tuple[str, ...] = ("positive", "negative", "served-model"),
    seed: int = 0,
    tally: FuzzTally | None = None,
) -> FuzzTally:
    """Every operation of the schema, ``examples`` cases per operation and generation mode.

    ``positive`` cases follow the schema, ``negative`` ones break it (wrong types, missing fields, values out of
    range). ``served-model`` cases are positive ones whose body names no model, so that they get past the model
    check (a random ``model`` is a 404) into compression and decoding. With ``send_key=False`` the cases go
    without the ``Authorization`` header, against a server that may require one (``api_key`` then only reads
    the schema).
    """
    from schemathesis import GenerationMode

    tally = tally or FuzzTally()
    schema = load_schema(url, api_key, send_key=send_key)
    headers = auth_headers(api_key) if send_key else {}
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in modes:
            if mode == "served-model":
                if operation.method.upper() != "POST":
                    continue
                strategy = operation.as_strategy(generation_mode=GenerationMode.POSITIVE).map(_without_model)
            else:
                strategy = operation.as_strategy(generation_mode=GenerationMode(mode))
            label = f"{operation.label} [{mode}{'' if send_key or not api_key else ', no key'}]"
            _run_cases(url, headers, strategy, label, examples, seed, tally)
    return tally


def _run_cases(
    url: str, headers: dict[str, str], strategy: Any, label: str, examples: int, seed: int, tally: FuzzTally
) -> None:
    import hypothesis
    from hypothesis import HealthCheck, given

    @hypothesis.settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
    )
    @hypothesis.seed(seed)
    @given(case=strategy)
    def run(case: Any) -> None:
        response = case.call(base_url=url, headers=headers, timeout=REQUEST_TIMEOUT)
        tally.record(label, case.method, case.formatted_path, _body(case), response)

    try:
        run()
    except hypothesis.errors.Unsatisfiable:  # nothing to break: a negative case of an operation without inputs
        tally.skipped.append(label)


def _without_model(case: Any) -> Any:
    if isinstance(case.body, dict):
        case.body.pop("model", None)
    return case


def _body(case: Any) -> Any:
    from schemathesis.core import NotSet

    body = case.body
    return None if isinstance(body, NotSet) else body


def fuzz_stateful(
    url: str,
    *,
    api_key: str | None = None,
    examples: int = 20,
    steps: int = 6,
    seed: int = 0,
    tally: FuzzTally | None = None,
) -> FuzzTally:
    """Sequences of calls that follow the schema's OpenAPI links (a call's response feeds the next request)."""
    import hypothesis
    from hypothesis import HealthCheck

    tally = tally or FuzzTally()
    schema = load_schema(url, api_key)
    headers = auth_headers(api_key)
    machine = schema.as_state_machine()

    class Recorded(machine):  # type: ignore[misc, valid-type]
        def call(self, case: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("timeout", REQUEST_TIMEOUT)
            return case.call(base_url=url, headers=headers, **kwargs)

        def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
            tally.record(f"{case.operation.label} [stateful]", case.method, case.formatted_path, _body(case), response)

    settings = hypothesis.settings(
        max_examples=examples,
        stateful_step_count=steps,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[hypothesis.Phase.generate],
    )
    hypothesis.seed(seed)(Recorded.TestCase)
    Recorded.run(settings=settings)
    return tally


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks reliability fuzz", description=__doc__.split("\n\n")[0].replace("\n", " ")
    )
    parser.add_argument("--model", default="tiny", help="tiny (random, fast), embedded, or a path or hub id")
    parser.add_argument("--examples", type=int, default=200, help="cases per operation and generation mode")
    parser.add_argument("--no-key-examples", type=int, default=20, help="cases per operation sent without the key")
    parser.add_argument("--stateful-examples", type=int, default=50, help="stateful sequences")
    parser.add_argument("--steps", type=int, default=6, help="calls per stateful sequence")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS_DIR), help="output folder")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Fuzz a server without a key, then one with a key (cases with and without it); exit 1 on any failure."""
    from finch_rag.server import ServerSettings, ServerThread

    from .models import compressor_for

    args = build_parser().parse_args(argv)
    compressor = compressor_for(args.model, args.seed)
    key = "reliability-fuzz-key"
    runs: dict[str, Any] = {}
    started = time.perf_counter()
    for name, api_key in (("no_key_server", None), ("key_server", key)):
        settings = ServerSettings(host="127.0.0.1", port=0, api_key=api_key)
        with ServerThread(settings, compressor=compressor) as server:
            tally = fuzz_operations(server.url, api_key=api_key, examples=args.examples, seed=args.seed)
            fuzz_stateful(
                server.url,
                api_key=api_key,
                examples=args.stateful_examples,
                steps=args.steps,
                seed=args.seed,
                tally=tally,
            )
            runs[name] = tally.summary()
            if api_key:
                unauthorised = fuzz_operations(
                    server.url, api_key=api_key, send_key=False, examples=args.no_key_examples, seed=args.seed
                )
                runs["key_server_requests_without_key"] = unauthorised.summary()
    totals = {
        "cases": sum(run["cases"] for run in runs.values()),
        "failures": sum(run["failures"] for run in runs.values()),
        "5xx": sum(run["5xx"] for run in runs.values()),
        "seconds": round(time.perf_counter() - started, 1),
    }
    meta = {"machine": machine_description(), "model": args.model, "schemathesis": _version("schemathesis")}
    meta.update({"hypothesis": _version("hypothesis"), "args": vars(args)})
    path = write_json(Path(args.out) / "reliability_fuzz.json", {"meta": meta, "totals": totals, "runs": runs})
    print(json.dumps(totals), f"-> {path}")
    for name, run in runs.items():
        print(f"{name}: {run['cases']} cases, statuses {run['statuses']}, failures {run['failures']}")
    return 1 if totals["failures"] else 0


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)
