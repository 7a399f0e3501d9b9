"""One batch replica in its own OS process, driven by JSON lines on stdin.

Used by ``tests/test_batch_replicas.py`` for the cases that need a second OS process
(a replica frozen with SIGSTOP, a cancel from another process). Run
``python tests/replica_batch_driver.py``: it builds a ``BlossomService`` from the
environment (``BLOSSOM_DASH_*``: the database, the backend, the lease), prints one
JSON line ``{"ready": true, "runner_id": ..., "id_prefix": ...}`` (``id_prefix`` starts
every request id this process makes), then answers one JSON line per command line:

- ``{"op": "submit", "n": 40, "model": "demo-swift", "max_tokens": 20}`` -> ``{"job": id}``
- ``{"op": "status", "job": id}`` -> the job's ``BatchStatus`` fields
- ``{"op": "cancel", "job": id}`` / ``{"op": "resume", "job": id}`` -> the status after it
- ``{"op": "stats"}`` -> ``{"discarded": n}``: late answers this replica threw away
- ``{"op": "close"}`` -> closes the service and exits

A ``DashError`` answers ``{"error": type, "message": ...}``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from blossom_dash import BlossomService, DashError, Settings  # noqa: E402
from blossom_dash.telemetry import collector  # noqa: E402

USER = "replica-tester"


def handle(svc: BlossomService, cmd: dict[str, Any]) -> dict[str, Any]:
    op = cmd.get("op")
    if op == "submit":
        rows = [{"prompt": f"question {i}", "model": cmd.get("model"), "max_tokens": cmd.get("max_tokens")}
                for i in range(int(cmd["n"]))]
        return {"job": svc.submit_batch(rows, user=USER, name="replicas.csv")}
    if op == "status":
        return dataclasses.asdict(svc.batch_status(cmd["job"]))
    if op == "cancel":
        return dataclasses.asdict(svc.cancel_batch(cmd["job"]))
    if op == "resume":
        return dataclasses.asdict(svc.resume_batch(cmd["job"]))
    if op == "stats":
        return {"discarded": svc._batch_runner().discarded}
    raise ValueError(f"unknown op {op!r}")


def main() -> int:
    svc = BlossomService(Settings())
    runner = svc._batch_runner()
    print(json.dumps({"ready": True, "runner_id": runner.runner_id, "id_prefix": collector._ID_PREFIX}), flush=True)
    try:
        for line in sys.stdin:
            cmd = json.loads(line)
            if cmd.get("op") == "close":
                break
            try:
                answer = handle(svc, cmd)
            except DashError as err:
                answer = {"error": type(err).__name__, "message": err.message}
            print(json.dumps(answer), flush=True)
    finally:
        svc.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
