"""Soak: thousands of mixed requests against one ``finch-rag serve`` process; memory, errors and latency over time.

The server is a real child process on 127.0.0.1 (``python -m finch_rag.cli serve --model DIR``), so its resident
memory (RSS, from ``/proc``) is the server's alone. The requests mix sizes (1 to 8 documents, short and long),
chat completions streamed and not, ``/v1/compress``, and streams the client abandons after their first content
chunk. Goals (issue 20): RSS after warm-up grows by at most 5 %, 0 errors, p95 latency stable between the first
and the last quarter.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from ..common import RESULTS_DIR, machine_description, write_json
from .process import ServerProcess, rss_bytes

SENTENCES = [
    "The harbour of Velmora freezes for two months every winter, so ships winter in the southern bay.",
    "Ada Quill built the Tarrowen lighthouse in 1887 from granite quarried on the island itself.",
    "Rivers on the island are short and steep, and most of them reach the sea within a day's walk.",
    "The island's council meets in the old customs house, which also keeps the archive of ship logs.",
    "Sheep outnumber people on Tarrowen by about twelve to one, and wool is still the main export.",
    "A ferry leaves Velmora for the mainland twice a week in summer and once a week in winter.",
    "The northern cliffs are home to puffins, guillemots and a colony of grey seals.",
    "The school in Velmora teaches in two languages, and its library lends books by post to the farms.",
]
QUESTIONS = [
    "Who built the lighthouse?",
    "When does the harbour freeze?",
    "What is the main export of the island?",
    "How often does the ferry leave in winter?",
    "Where does the council meet?",
]


STORE_BYTES = 16 * 2**20
"""The soak's store bound. The store is a cache that grows to its bound by design; a tiny-model context holds 50-500
KB (KV and prompt), so the server's default 256 MiB fills only after ~1,700 of the soak's requests and would hide a
leak or fake one. 16 MiB is full after about 100 requests, before the warm-up ends."""


@dataclass
class Outcome:
    index: int
    kind: str
    ok: bool
    seconds: float
    detail: str = ""


def make_request(index: int, rng: random.Random) -> tuple[str, dict[str, Any]]:
    """Request ``index`` of the soak: kind (chat, stream, cancel, compress) and body, drawn from ``rng``."""
    documents = [" ".join(rng.choices(SENTENCES, k=rng.choice((1, 2, 4, 12)))) for _ in range(rng.randint(1, 8))]
    question = rng.choice(QUESTIONS)
    budget = {"target_tokens": rng.choice((16, 64, 256))}
    roll = rng.random()
    if roll < 0.15:
        return "compress", {"question": question, "documents": documents, **budget}
    body = {
        "messages": [{"role": "user", "content": question}],
        "documents": documents,
        "finch": budget,
        "max_tokens": rng.choice((4, 16, 48)),
    }
    if roll < 0.55:
        return "chat", body
    if roll < 0.9:
        return "stream", {**body, "stream": True}
    return "cancel", {**body, "stream": True, "max_tokens": 200}


def send(client: httpx.Client, index: int, kind: str, body: dict[str, Any]) -> Outcome:
    started = time.perf_counter()
    try:
        if kind in ("chat", "compress"):
            path = "/v1/compress" if kind == "compress" else "/v1/chat/completions"
            response = client.post(path, json=body)
            ok = response.status_code == 200
            return Outcome(index, kind, ok, time.perf_counter() - started, "" if ok else response.text[:300])
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                return Outcome(index, kind, False, time.perf_counter() - started, response.read().decode()[:300])
            done = False
            for line in response.iter_lines():
                if kind == "cancel" and '"content": "' in line and '"content": ""' not in line:
                    break  # the client walks away mid-stream; the server must stop decoding and free its place
                if '"error"' in line:
                    return Outcome(index, kind, False, time.perf_counter() - started, line[:300])
                done = done or line == "data: [DONE]"
            ok = done or kind == "cancel"
            return Outcome(index, kind, ok, time.perf_counter() - started, "" if ok else "no [DONE]")
    except httpx.HTTPError as error:
        return Outcome(index, kind, False, time.perf_counter() - started, f"{type(error).__name__}: {error}")


def store_bytes(client: httpx.Client) -> int:
    """Bytes the server's context store holds now (``finch_store_bytes`` in ``/metrics``)."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("finch_store_bytes "):
            return int(float(line.split()[1]))
    raise RuntimeError("the server's /metrics has no finch_store_bytes")


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) >= 2 else (values[0] if values else 0.0)


def run_soak(
    server: ServerProcess, *, requests: int, clients: int, warmup: int, seed: int, sample_every: int
) -> dict[str, Any]:
    rng = random.Random(seed)
    plan = [make_request(index, rng) for index in range(requests)]
    outcomes: list[Outcome] = []
    rss: list[tuple[int, int]] = []
    stored: list[tuple[int, int]] = []
    lock = threading.Lock()
    with httpx.Client(base_url=server.url, timeout=300) as client, ThreadPoolExecutor(clients) as pool:

        def one(index: int) -> None:
            outcome = send(client, index, *plan[index])
            with lock:
                outcomes.append(outcome)
                done = len(outcomes)
                if done == warmup or done % sample_every == 0 or done == requests:
                    rss.append((done, rss_bytes(server.pid)))
                    stored.append((done, store_bytes(client)))

        started = time.perf_counter()
        list(pool.map(one, range(requests)))
        wall = time.perf_counter() - started
        health = client.get("/health").json()
    after_warmup = [value for done, value in rss if done >= warmup]
    base = after_warmup[0]
    timed = [o for o in outcomes if o.kind != "cancel"]
    quarter = len(timed) // 4
    first, last = [o.seconds for o in timed[:quarter]], [o.seconds for o in timed[-quarter:]]
    errors = [o for o in outcomes if not o.ok]
    kinds: dict[str, int] = {}
    for outcome in outcomes:
        kinds[outcome.kind] = kinds.get(outcome.kind, 0) + 1
    return {
        "requests": len(outcomes),
        "kinds": kinds,
        "errors": len(errors),
        "error_examples": [vars(o) for o in errors[:10]],
        "wall_seconds": round(wall, 1),
        "requests_per_second": round(len(outcomes) / wall, 2),
        "rss_mib_after_warmup": round(base / 2**20, 1),
        "rss_mib_final": round(after_warmup[-1] / 2**20, 1),
        "rss_mib_max_after_warmup": round(max(after_warmup) / 2**20, 1),
        "rss_growth_after_warmup": round(after_warmup[-1] / base - 1, 4),
        "rss_samples_mib": [(done, round(value / 2**20, 1)) for done, value in rss],
        # the context store fills up to its bound (--store-bytes); growth past the bound would be a leak
        "store_samples_mib": [(done, round(value / 2**20, 1)) for done, value in stored],
        "p95_seconds_first_quarter": round(p95(first), 4),
        "p95_seconds_last_quarter": round(p95(last), 4),
        "p95_ratio_last_to_first": round(p95(last) / p95(first), 3) if first and p95(first) else None,
        "queue_depth_after": health.get("queue_depth"),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks reliability soak", description=__doc__.split("\n\n")[0].replace("\n", " ")
    )
    parser.add_argument("--model", default="tiny", help="tiny (random, fast), embedded, or a path or hub id")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--warmup", type=int, default=200, help="requests before the RSS baseline")
    parser.add_argument("--sample-every", type=int, default=100, help="RSS sample every N requests")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--store-bytes",
        type=int,
        default=STORE_BYTES,
        help="the server's --store-bytes (default 16 MiB, so the store is full before the RSS baseline; 0: the "
        "server's own default)",
    )
    parser.add_argument("--out", default=str(RESULTS_DIR), help="output folder")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        model = _model_path(args.model, Path(scratch), args.seed)
        extra = ["--store-bytes", str(args.store_bytes)] if args.store_bytes else []
        with ServerProcess(model, "--max-tokens", "64", *extra) as server:
            result = run_soak(
                server,
                requests=args.requests,
                clients=args.clients,
                warmup=args.warmup,
                seed=args.seed,
                sample_every=args.sample_every,
            )
            result["server_exit_code_on_sigterm"] = server.terminate()
    meta = {"machine": machine_description(), "model": args.model, "args": vars(args)}
    path = write_json(Path(args.out) / "reliability_soak.json", {"meta": meta, "result": result})
    print(json.dumps({k: v for k, v in result.items() if k not in ("rss_samples_mib", "error_examples")}))
    print(f"-> {path}")
    return 1 if result["errors"] else 0


def _model_path(name: str, scratch: Path, seed: int) -> str | None:
    """What ``--model`` gives the server: the tiny model saved to ``scratch``, the embedded default, or ``name``."""
    if name == "embedded":
        return None
    if name != "tiny":
        return name
    from finch_rag.progress import transformers_bars_as_ours

    from .models import tiny_model

    model, tokenizer = tiny_model(seed)
    with transformers_bars_as_ours():  # its shard-writing bar, in a log
        model.save_pretrained(scratch / "tiny")
    tokenizer.save_pretrained(scratch / "tiny")
    return str(scratch / "tiny")
