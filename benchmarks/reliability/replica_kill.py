"""Replica failure on Ray Serve: 2 replicas, 32 clients, one replica's process killed (SIGKILL) mid-run.

Each client sends small chat completions in a loop and, like OpenAI's clients, retries a failed request (a 5xx, a
429 or a broken connection) up to ``--retries`` times with a short backoff. Counted: requests ok at the first try,
ok after retries ("retried-ok"), and failed after every retry; every failed attempt's status and body (a clear
failure is a 503 with an OpenAI-style error body); attempts that ran past the client's deadline; and the recovery
time, from the kill until a new replica process answers ``/health`` and until throughput is back to 80 % of its
level before the kill.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ..common import RESULTS_DIR, machine_description, write_json
from .fuzz import error_body_problem
from .process import free_port

BODY = {
    "messages": [{"role": "user", "content": "Who built the lighthouse?"}],
    "documents": ["Ada Quill built the Tarrowen lighthouse in 1887.", "Sheep outnumber people on Tarrowen."],
    "finch": {"target_tokens": 16},
    "max_tokens": 8,
}
RETRYABLE = {429, 500, 502, 503, 504}


@dataclass
class Tally:
    ok_first_try: int = 0
    retried_ok: int = 0
    failed: int = 0
    deadline_exceeded: int = 0
    failed_attempts: Counter[str] = field(default_factory=Counter)
    unclear_failures: list[str] = field(default_factory=list)
    completions: list[float] = field(default_factory=list)  # monotonic time of each successful request
    lock: threading.Lock = field(default_factory=threading.Lock)


def client_loop(url: str, stop_at: float, tally: Tally, retries: int, deadline: float) -> None:
    with httpx.Client(base_url=url, timeout=deadline) as client:
        while time.monotonic() < stop_at:
            for attempt in range(retries + 1):
                reason = _attempt(client, tally)
                if reason is None:
                    with tally.lock:
                        tally.completions.append(time.monotonic())
                        if attempt == 0:
                            tally.ok_first_try += 1
                        else:
                            tally.retried_ok += 1
                    break
                with tally.lock:
                    tally.failed_attempts[reason] += 1
                time.sleep(min(0.25 * 2**attempt, 2.0))
            else:
                with tally.lock:
                    tally.failed += 1


def _attempt(client: httpx.Client, tally: Tally) -> str | None:
    """``None`` when the request succeeded, else a short reason."""
    try:
        response = client.post("/v1/chat/completions", json=BODY)
    except httpx.TimeoutException:
        with tally.lock:
            tally.deadline_exceeded += 1
        return "client deadline exceeded"
    except httpx.HTTPError as error:
        return f"connection: {type(error).__name__}"
    if response.status_code == 200:
        return None
    problem = error_body_problem(response.text)
    if response.status_code != 503 or problem:
        with tally.lock:
            tally.unclear_failures.append(f"{response.status_code}: {response.text[:200]}")
    return f"status {response.status_code}"


def replica_pids(url: str, replicas: int, timeout: float = 60.0) -> dict[str, int]:
    """Replica id -> process id, from ``/health`` (which reports both), polled until every replica has answered."""
    found: dict[str, int] = {}
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=url, timeout=30) as client:
        while len(found) < replicas and time.monotonic() < deadline:
            health = client.get("/health").json()
            found[health["replica"]] = int(health["pid"])
    if len(found) < replicas:
        raise RuntimeError(f"only {len(found)} of {replicas} replicas answered /health within {timeout} s")
    return found


def _new_replica_answers(client: httpx.Client, old_pids: set[int]) -> bool:
    try:
        return int(client.get("/health").json()["pid"]) not in old_pids
    except (httpx.HTTPError, ValueError, KeyError):
        return False


def run_replica_kill(
    url: str, *, replicas: int, clients: int, seconds: float, kill_at: float, retries: int, deadline: float
) -> dict[str, Any]:
    pids = replica_pids(url, replicas)
    tally = Tally()
    started = time.monotonic()
    stop_at = started + seconds
    threads = [
        threading.Thread(target=client_loop, args=(url, stop_at, tally, retries, deadline), daemon=True)
        for _ in range(clients)
    ]
    for thread in threads:
        thread.start()
    time.sleep(kill_at)
    victim_replica, victim_pid = sorted(pids.items())[0]
    killed_at = time.monotonic()
    os.kill(victim_pid, signal.SIGKILL)
    replicas_back_at = None
    with httpx.Client(base_url=url, timeout=5) as monitor:
        while time.monotonic() < stop_at:
            # Back means a replica process that did not exist before the kill answers (Serve's status may still
            # list the dead replica as running until its health check notices).
            if replicas_back_at is None and _new_replica_answers(monitor, set(pids.values())):
                replicas_back_at = time.monotonic()
            time.sleep(0.2)
    for thread in threads:
        thread.join(deadline * (retries + 2))
    seconds_before = [t - started for t in tally.completions]
    buckets = Counter(int(t) for t in seconds_before)
    before = [buckets.get(second, 0) for second in range(2, int(kill_at))]
    level = statistics.mean(before) if before else 0.0
    kill_second = int(killed_at - started)
    recovered = next(
        (second for second in range(kill_second + 1, int(seconds)) if buckets.get(second, 0) >= 0.8 * level), None
    )
    return {
        "replicas": replicas,
        "clients": clients,
        "seconds": seconds,
        "killed": {"replica": victim_replica, "pid": victim_pid, "at_second": round(killed_at - started, 1)},
        "ok_first_try": tally.ok_first_try,
        "retried_ok": tally.retried_ok,
        "failed": tally.failed,
        "failed_attempts": dict(tally.failed_attempts),
        "unclear_failures": len(tally.unclear_failures),
        "unclear_failure_examples": tally.unclear_failures[:10],
        "attempts_past_client_deadline": tally.deadline_exceeded,
        "throughput_before_kill_per_second": round(level, 2),
        "throughput_per_second": [buckets.get(second, 0) for second in range(int(seconds))],
        "seconds_until_new_replica_answers": round(replicas_back_at - killed_at, 1) if replicas_back_at else None,
        "seconds_until_throughput_80_percent": (recovered - kill_second) if recovered is not None else None,
        "new_replica_pids": replica_pids(url, replicas) if replicas_back_at else None,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks reliability replica-kill", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--model", default="tiny", help="tiny (random, fast), embedded, or a path or hub id")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=90.0, help="length of the run")
    parser.add_argument("--kill-at", type=float, default=20.0, help="seconds into the run when a replica is killed")
    parser.add_argument("--retries", type=int, default=5, help="retries per request after a failed attempt")
    parser.add_argument("--deadline", type=float, default=30.0, help="client timeout per attempt, seconds")
    parser.add_argument("--ray-cpus", type=int, default=2, help="CPUs the local Ray instance offers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS_DIR), help="output folder")
    return parser


def main(argv: list[str] | None = None) -> int:
    from finch_rag.server import ServerSettings
    from finch_rag.server.ray_serve import RayServer

    from .soak import _model_path

    args = build_parser().parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        model = _model_path(args.model, Path(scratch), args.seed)
        settings = ServerSettings(model=model, host="127.0.0.1", port=free_port(), drain_timeout=10)
        started = time.monotonic()
        with RayServer(
            settings, replicas=args.replicas, num_cpus=args.ray_cpus / (args.replicas + 1), ray_cpus=args.ray_cpus
        ) as server:
            startup = time.monotonic() - started
            result = run_replica_kill(
                server.url,
                replicas=args.replicas,
                clients=args.clients,
                seconds=args.seconds,
                kill_at=args.kill_at,
                retries=args.retries,
                deadline=args.deadline,
            )
    result["ray_startup_seconds"] = round(startup, 1)
    meta = {"machine": machine_description(), "model": args.model, "args": vars(args)}
    path = write_json(Path(args.out) / "reliability_replica_kill.json", {"meta": meta, "result": result})
    print(json.dumps({k: v for k, v in result.items() if k != "throughput_per_second"}))
    print(f"-> {path}")
    return 1 if result["failed"] else 0
