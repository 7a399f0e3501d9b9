"""Two replicas of the service, two OS processes, on one real Redis and one real PostgreSQL.

Each replica is ``tests/replica_server.py`` (a ``BlossomService`` built from the
environment, driven over loopback HTTP); both talk to one standalone demo backend, as
replicas behind a proxy share Pollinations. The replicas start at the same moment on an
empty database, so the module's set-up is itself the concurrent-start check.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from services import free_port

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / "tests" / "replica_server.py"


@dataclass
class Replica:
    name: str
    process: subprocess.Popen[str]
    port: int

    def call(self, op: str, **body: object) -> dict:
        r = httpx.post(f"http://127.0.0.1:{self.port}/{op}", json=body, timeout=60)
        r.raise_for_status()
        return r.json()


def start_demo_backend(latency: bool = False) -> tuple[subprocess.Popen[str], str]:
    """A standalone demo backend on a free port; returns the process and its base URL."""
    port = free_port()
    args = [sys.executable, "-m", "blossom_dash.demo_backend", "--port", str(port)]
    proc = subprocess.Popen([*args] + ([] if latency else ["--no-latency"]), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).status_code == 200:
                return proc, f"http://127.0.0.1:{port}"
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the demo backend did not start within 30 s")


def start_replicas(names: list[str], env: dict[str, str], tmp: Path) -> list[Replica]:
    """Start one replica per name at the same moment; wait until each prints READY.

    Raises:
        AssertionError: a replica failed to start (its own words are in the message).
    """
    procs = []
    for name in names:
        penv = {**os.environ, **env, "BLOSSOM_DASH_DATA_DIR": str(tmp / name)}
        procs.append(subprocess.Popen([sys.executable, str(SERVER)], cwd=ROOT, env=penv, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL))
    replicas = []
    for name, proc in zip(names, procs, strict=True):
        line = proc.stdout.readline().strip() if proc.stdout else ""
        assert line.startswith("READY "), f"replica {name} did not start: {line or proc.wait(30)}"
        replicas.append(Replica(name, proc, int(line.split()[1])))
    return replicas


def stop_replicas(replicas: list[Replica]) -> None:
    for r in replicas:
        try:
            r.call("close")
        except httpx.HTTPError:
            pass
        try:
            r.process.wait(15)
        except subprocess.TimeoutExpired:
            r.process.kill()


@pytest.fixture(scope="module")
def pair(redis_server: object, postgres_server: object,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Replica, Replica]]:
    backend, url = start_demo_backend()
    redis_server.fresh_url()  # type: ignore[attr-defined]
    env = {
        "BLOSSOM_DASH_BACKEND": url,
        "BLOSSOM_DASH_ALLOW_CUSTOM_BACKEND": "true",
        "BLOSSOM_DASH_DATABASE_URL": postgres_server.fresh_url(),  # type: ignore[attr-defined]
        "BLOSSOM_DASH_REDIS_URL": redis_server.url,  # type: ignore[attr-defined]
        "BLOSSOM_DASH_PER_USER_RPM": "7",
        "BLOSSOM_DASH_GLOBAL_RPM": "100000",
        "BLOSSOM_DASH_RETRIES": "0",
        "BLOSSOM_DASH_LOG_LEVEL": "ERROR",
    }
    replicas = start_replicas(["a", "b"], env, tmp_path_factory.mktemp("replicas"))
    try:
        yield replicas[0], replicas[1]
    finally:
        stop_replicas(replicas)
        backend.terminate()
        backend.wait(10)


def test_a_per_user_limit_is_exact_across_two_replicas(pair: tuple[Replica, Replica]) -> None:
    a, b = pair
    user = f"limit-{uuid.uuid4().hex[:6]}"

    def one(k: int) -> dict:
        return (a if k % 2 else b).call("text", prompt=f"limit {user} {k}", user=user)

    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(one, range(50)))
    admitted = [x for x in answers if x["ok"]]
    refused = [x for x in answers if not x["ok"]]
    assert len(admitted) == 7, answers
    assert {x["error"] for x in refused} == {"RateLimited"}, refused
    assert all(x["retry_after_s"] and x["retry_after_s"] > 0 for x in refused)


def test_a_miss_on_one_replica_is_a_hit_on_the_other(pair: tuple[Replica, Replica]) -> None:
    a, b = pair
    prompt = f"shared cache {uuid.uuid4().hex}"
    first = a.call("text", prompt=prompt, user="cache-a")
    assert first["ok"] and not first["cached"], first
    second = b.call("text", prompt=prompt, user="cache-b")
    assert second["ok"] and second["cached"], second


def test_a_clear_on_one_replica_is_seen_by_the_other_within_a_second(pair: tuple[Replica, Replica]) -> None:
    a, b = pair
    prompt = f"to be cleared {uuid.uuid4().hex}"
    assert a.call("text", prompt=prompt, user="clear-a")["ok"]
    assert b.call("text", prompt=prompt, user="clear-b")["cached"]  # B serves it from the shared cache
    assert a.call("clear_cache")["cleared"] >= 1
    time.sleep(1.0)  # the bound: "seen by every replica within a second"
    again = b.call("text", prompt=prompt, user="clear-b")
    assert again["ok"] and not again["cached"], again


def test_an_event_written_by_one_replica_is_on_the_others_monitor_within_a_second(
        pair: tuple[Replica, Replica]) -> None:
    a, b = pair
    user = f"monitor-{uuid.uuid4().hex[:6]}"
    before = b.call("kpis", window_s=600, user=user)["requests"]
    assert before == 0
    assert a.call("text", prompt=f"monitor {uuid.uuid4().hex}", user=user)["ok"]
    answered = time.monotonic()
    seen = before
    while time.monotonic() - answered < 1.0 and seen <= before:
        seen = b.call("kpis", window_s=600, user=user)["requests"]
        time.sleep(0.05)
    assert seen == before + 1, f"B's Monitor still shows {seen} requests 1 s after A answered (was {before})"
