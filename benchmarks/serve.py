"""Serve suite: load on the OpenAI-compatible server, from 1 to 64 concurrent clients.

Each setup runs as its own server process (``finch-rag serve ...`` on a free local port): one process with request
batching, the same with batching off (``--max-batch-size 1``), and Ray Serve with 2 replicas (``--ray``). All are
started first; then, for every concurrency in turn and on each setup in turn (so that they are measured side by
side), that many clients each send ``--requests`` chat completions one after another (a closed loop);
each request carries ``--documents`` passages of the built-in demo corpus (rotated per request, as a retriever's
top-k would) and its question, and asks for ``--max-tokens`` tokens, greedily. Reported per setup and concurrency:
requests per second, latency percentiles, errors (anything but a 200), and the server's resident memory (every
replica's, summed) before and after.

With ``--before PATH`` (a checkout of an earlier commit, e.g. ``git worktree add /tmp/serve-before a53194e``)
every setup runs twice, once on that code (``PYTHONPATH=PATH``, with ``python -P`` so that the working directory
cannot shadow it) and once on this one, side by side in the same run, so that a change is measured under the same
load. With 1 client in ``--concurrency``, the same requests are
also answered in this process by `FinchCompressor` (compress, then generate; no HTTP, no batching), the
reference a 1-client latency is compared with.

    python -m benchmarks.serve --concurrency 1 4 16 64 --requests 2
    python -m benchmarks.serve --setups batched --before /tmp/serve-before --documents 2 --max-tokens 6
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from finch_rag.models import DTYPES

from .common import RESULTS_DIR, command_line, machine_description, markdown_table, meta_lines, write_json

REPO_ROOT = Path(__file__).resolve().parents[1]

TIMEOUT = 3600.0  # seconds per request: under 64 clients on 2 busy cores a request may wait long, never forever


@dataclass(frozen=True)
class Setup:
    """One server configuration: a name and its ``finch-rag serve`` arguments."""

    name: str
    arguments: tuple[str, ...]


SETUPS = {
    "batched": Setup("single process, batching on", ()),
    "unbatched": Setup("single process, batching off", ("--max-batch-size", "1")),
    "ray": Setup("Ray Serve, 2 replicas, batching on", ("--ray", "--replicas", "2")),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def demo_requests(count: int, documents: int, max_tokens: int, target_tokens: int) -> list[dict[str, Any]]:
    """``count`` chat requests over the demo corpus: question ``i`` with ``documents`` passages from ``i`` on."""
    corpus = json.loads(resources.files("finch_rag").joinpath("data", "demo_corpus.json").read_text(encoding="utf-8"))
    passages, questions = corpus["passages"], corpus["questions"]
    bodies = []
    for index in range(count):
        chosen = [passages[(index + offset) % len(passages)] for offset in range(documents)]
        bodies.append(
            {
                "messages": [{"role": "user", "content": questions[index % len(questions)]["question"]}],
                "documents": [{"text": passage["text"], "title": passage["title"]} for passage in chosen],
                "finch": {"target_tokens": target_tokens},
                "max_tokens": max_tokens,
                "temperature": 0,
            }
        )
    return bodies


class ServerProcess:
    """``finch-rag serve`` in a child process, stopped with SIGTERM on exit (it shuts down cleanly)."""

    def __init__(
        self,
        arguments: Sequence[str],
        log: Path,
        startup_timeout: float = 900.0,
        source: str | None = None,
        threads: int | None = None,
    ) -> None:
        self.port = free_port()
        self.source = source  # a source tree put first on PYTHONPATH (`--before`), else this one
        self.threads = threads  # the server's torch threads (OMP_NUM_THREADS); None: as this process has it
        self.url = f"http://127.0.0.1:{self.port}"
        # -P: `python -m` would otherwise put the working directory first on sys.path, and a benchmark run from
        # the repository root would import this checkout's finch_rag even for a `--before` tree.
        self.command = [sys.executable, "-P", "-m", "finch_rag.cli", "serve", "--port", str(self.port), *arguments]
        self.log_path = log
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ServerProcess:
        import httpx

        self._log = self.log_path.open("w")
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        code = self.source if self.source is not None else str(REPO_ROOT)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (code, env.get("PYTHONPATH"))))
        if self.threads is not None:
            env["OMP_NUM_THREADS"] = str(self.threads)
        self.process = subprocess.Popen(self.command, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{' '.join(self.command)} exited; see {self.log_path}")
            try:
                if httpx.get(f"{self.url}/health", timeout=5).json().get("status") == "ok":
                    return self
            except (httpx.TransportError, ValueError):
                pass
            time.sleep(1)
        self.__exit__()
        raise TimeoutError(f"The server did not answer /health within {self.startup_timeout} s; see {self.log_path}")

    def __exit__(self, *exc: Any) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        self._log.close()


def server_rss(url: str, probes: int = 24) -> tuple[int, int]:
    """(resident bytes summed over the server's processes, how many) — replicas found by probing ``/health``."""
    import httpx
    import psutil

    pids = set()
    with httpx.Client(timeout=30) as client:
        for _ in range(probes):
            pids.add(client.get(f"{url}/health").json()["pid"])
    return sum(psutil.Process(pid).memory_info().rss for pid in pids), len(pids)


async def run_load(url: str, bodies: list[dict[str, Any]], clients: int, per_client: int) -> dict[str, Any]:
    """``clients`` concurrent clients, each sending ``per_client`` requests in turn; latencies and errors."""
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    answers: dict[int, str] = {}  # body index -> answer text, to compare servers request for request
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT, limits=limits) as http:

        async def client(number: int) -> None:
            for turn in range(per_client):
                index = (number * per_client + turn) % len(bodies)
                started = time.perf_counter()
                try:
                    response = await http.post("/v1/chat/completions", json=bodies[index])
                    if response.status_code != 200:
                        errors.append(f"{response.status_code}: {response.text[:200]}")
                    else:
                        answers[index] = response.json()["choices"][0]["message"]["content"]
                except httpx.HTTPError as error:
                    errors.append(f"{type(error).__name__}: {error}")
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(client(number) for number in range(clients)))
        wall = time.perf_counter() - started
    ordered = sorted(latencies)

    def percentile(share: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]

    return {
        "clients": clients,
        "requests": len(latencies),
        "seconds": wall,
        "requests_per_s": len(latencies) / wall,
        "p50_s": percentile(0.50),
        "p95_s": percentile(0.95),
        "p99_s": percentile(0.99),
        "mean_s": statistics.fmean(latencies),
        "errors": len(errors),
        "error_samples": errors[:3],
        "answers": {str(index): answers[index] for index in sorted(answers)},
    }


def measure(
    key: str, code: str, server: ServerProcess, bodies: list[dict[str, Any]], clients: int, per_client: int
) -> dict:
    """One row: ``clients`` concurrent clients on one setup's server, with its memory before and after."""
    before, processes = server_rss(server.url)
    row = asyncio.run(run_load(server.url, bodies, clients, per_client))
    after, _ = server_rss(server.url)
    row |= {
        "setup": SETUPS[key].name,
        "code": code,
        "processes": processes,
        "rss_before_mib": before / 2**20,
        "rss_after_mib": after / 2**20,
    }
    print(
        f"{row['setup']:<36} {code:<16} {clients:>3} clients: {row['requests_per_s']:.2f} req/s, "
        f"p50 {row['p50_s']:.1f} s, p99 {row['p99_s']:.1f} s, {row['errors']} errors, "
        f"RSS {row['rss_before_mib']:.0f} -> {row['rss_after_mib']:.0f} MiB",
        file=sys.stderr,
    )
    return row


def in_process(compressor: Any, bodies: list[dict[str, Any]]) -> dict[str, Any]:
    """The requests answered one after another in this process: `FinchCompressor.compress`, then ``generate``.

    The same passages, question, budget and answer length as the server gets, on the same embedded model and
    thread count; what a 1-client request costs without HTTP, batching window or threads in between.
    """
    from finch_rag import FinchConfig, Passage

    latencies = []
    for body in bodies:
        passages = [Passage(document["text"], document["title"]) for document in body["documents"]]
        config = FinchConfig(target_tokens=body["finch"]["target_tokens"], progress=False)
        started = time.perf_counter()
        compressed = compressor.compress(passages, body["messages"][-1]["content"], config=config)
        compressor.generate(compressed, max_new_tokens=body["max_tokens"], temperature=body["temperature"])
        latencies.append(time.perf_counter() - started)
    ordered = sorted(latencies)
    return {
        "setup": "in process: FinchCompressor compress + generate",
        "code": "this checkout",
        "clients": 1,
        "requests": len(latencies),
        "p50_s": ordered[(len(ordered) - 1) // 2],
        "mean_s": statistics.fmean(latencies),
        "errors": 0,
    }


def source_label(source: str | None) -> str:
    """``before (<commit>)`` for a ``--before`` tree, ``after (<commit>)`` for this checkout."""
    tree = source or str(REPO_ROOT)
    try:
        commit = subprocess.run(
            ["git", "-C", tree, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "-C", tree, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        commit += " + uncommitted changes" if changes.strip() else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "not a git checkout"
    return f"{'before' if source else 'after'} ({commit})"


def run_setups(args: argparse.Namespace, bodies: list[dict[str, Any]], logs: Path) -> list[dict[str, Any]]:
    """Every setup's server up at once, then each concurrency on each setup in turn.

    Interleaving keeps the setups side by side: on a machine shared with other work, the load changes over an
    hour, and a setup measured in one block would be compared under other conditions than the next. With
    ``--before``, each setup's before and after servers are neighbours in that turn.
    """
    extra = (
        "--batch-window-ms",
        str(args.batch_window_ms),
        "--max-queue",
        str(args.max_queue),
        "--log-level",
        "warning",
    )
    sources = [args.before, None] if args.before else [None]
    dtype = ("--dtype", args.dtype) if args.dtype else ()
    compressor = None
    if args.in_process and 1 in args.concurrency:
        import torch

        from finch_rag.frontends.handle import shared_compressor

        if args.server_threads is not None:
            torch.set_num_threads(args.server_threads)  # the reference runs as the servers do
        compressor = shared_compressor(None, args.dtype)  # what a server loads: the same dtype and prefix cache
        in_process(compressor, bodies[:1])  # warm-up, as the servers get
    rows = []
    with contextlib.ExitStack() as stack:
        servers = {
            (key, source_label(source)): stack.enter_context(
                ServerProcess(
                    (*SETUPS[key].arguments, *extra, *(dtype if source is None else ())),
                    logs / f"serve_{key}{'_before' if source else ''}.log",
                    source=source,
                    threads=args.server_threads,
                )
            )
            for key in args.setups
            for source in sources
        }
        for (key, _), server in servers.items():
            # Warm-up, so that first-call costs stay out of the figures: enough at once to reach every replica.
            asyncio.run(run_load(server.url, bodies, 6 if "--ray" in SETUPS[key].arguments else 2, 1))
        for clients in args.concurrency:
            rows += [
                measure(key, code, server, bodies, clients, args.requests) for (key, code), server in servers.items()
            ]
            if clients == 1 and compressor is not None:
                rows.append(in_process(compressor, bodies[: args.requests]))
    return rows


def summary(rows: list[dict[str, Any]]) -> list[str]:
    """Ratios within the run: each server's 1-client p50 over the in-process one, and after over before."""
    lines = []
    reference = next((row for row in rows if row["setup"].startswith("in process")), None)
    served = [row for row in rows if not row["setup"].startswith("in process")]
    if reference is not None:
        lines += [f"1-client p50 over the in-process p50 ({reference['p50_s']:.2f} s):", ""]
        lines += [
            f"- {row['setup']}, {row['code']}: {row['p50_s'] / reference['p50_s']:.2f}x"
            for row in served
            if row["clients"] == 1
        ]
        lines.append("")
    after = {(row["setup"], row["clients"]): row for row in served if row["code"].startswith("after")}
    pairs = [(row, after.get((row["setup"], row["clients"]))) for row in served if row["code"].startswith("before")]
    if pairs:
        lines += ["Requests per second, after over before (and the after server's answers equal to the before's):", ""]
        lines += [
            f"- {before['setup']}, {before['clients']} clients: {now['requests_per_s'] / before['requests_per_s']:.2f}x"
            f" ({identical_answers(before, now)})"
            for before, now in pairs
            if now is not None
        ]
        lines.append("")
    return lines


def identical_answers(before: dict[str, Any], after: dict[str, Any]) -> str:
    """How many requests both servers answered got the same text from each, e.g. ``"128 of 128 identical"``."""
    shared = set(before.get("answers", {})) & set(after.get("answers", {}))
    same = sum(before["answers"][index] == after["answers"][index] for index in shared)
    return f"{same} of {len(shared)} identical"


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m benchmarks.serve``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--setups", nargs="+", choices=list(SETUPS), default=list(SETUPS), help="server setups")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64], help="concurrent clients")
    parser.add_argument("--requests", type=int, default=2, help="requests per client")
    parser.add_argument("--documents", type=int, default=3, help="demo passages per request")
    parser.add_argument("--target-tokens", type=int, default=64, help="B, kept context entries")
    parser.add_argument("--max-tokens", type=int, default=8, help="answer tokens")
    parser.add_argument("--batch-window-ms", type=float, default=20.0)
    parser.add_argument("--max-queue", type=int, default=256)
    parser.add_argument(
        "--server-threads",
        type=int,
        help="torch threads of every server process (OMP_NUM_THREADS); default: as this process has it",
    )
    parser.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        help="weights' dtype of this checkout's servers (finch-rag serve --dtype; the --before code has no such flag)",
    )
    parser.add_argument(
        "--before",
        metavar="PATH",
        help="also run every setup on the code at PATH (a checkout of an earlier commit), side by side",
    )
    parser.add_argument(
        "--no-in-process",
        dest="in_process",
        action="store_false",
        help="skip the in-process reference (FinchCompressor compress + generate) at 1 client",
    )
    parser.add_argument("--note", help="conditions of the run, written with the machine (e.g. other work on it)")
    parser.add_argument("--out", default=str(RESULTS_DIR), help="output folder")
    parser.add_argument("--name", default="serve", help="output file stem")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bodies = demo_requests(max(args.concurrency) * args.requests, args.documents, args.max_tokens, args.target_tokens)
    logs = Path(tempfile.mkdtemp(prefix="finch-serve-logs-"))
    print(f"Server logs: {logs}", file=sys.stderr)
    rows = run_setups(args, bodies, logs)
    meta = {
        "command": command_line("python -m benchmarks.serve", argv),
        "machine": machine_description() + (f"; {args.note}" if args.note else ""),
        "server threads": args.server_threads or os.environ.get("OMP_NUM_THREADS", "torch default"),
        "model": "SmolLM2-135M-Instruct (embedded default)",
        "request": f"{args.documents} demo passages, B={args.target_tokens}, {args.max_tokens} answer tokens, greedy",
        "dtype": f"{args.dtype or 'float32'} for this checkout's servers" + (", float32 before" if args.before else ""),
        "requests per client": args.requests,
        "batching": f"window {args.batch_window_ms} ms, at most 8 requests per batch",
    }
    write_json(out / f"{args.name}.json", {"meta": meta, "rows": rows})
    columns = [
        "setup",
        "code",
        "clients",
        "requests",
        "requests_per_s",
        "p50_s",
        "p95_s",
        "p99_s",
        "errors",
        "rss_before_mib",
        "rss_after_mib",
    ]
    lines = ["# Serving under load: throughput, latency, errors, memory", ""]
    lines += meta_lines(meta)
    lines += ["", "Latency in seconds per request; RSS of every server process, summed, in MiB.", ""]
    lines += [markdown_table(rows, columns), ""]
    lines += summary(rows)
    text = "\n".join(lines)
    (out / f"{args.name}.md").write_text(text, encoding="utf-8")
    print(text)
    return 0 if all(row["errors"] == 0 for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
