"""One replica of the service in its own OS process, driven over loopback HTTP.

Used by the cross-process tests (``tests/test_replicas.py``) and by
``bench/replicas.py``. Run ``python tests/replica_server.py``: it builds a
``BlossomService`` from the environment (``BLOSSOM_DASH_*``: the database, Redis, the
backend), then serves on a free port of 127.0.0.1 and prints ``READY <port>`` on stdout
once the service is up (or ``FAILED <type>: <message>`` and exits 1).

Each operation is ``POST /<op>`` with a JSON object; the answer is a JSON object:

- ``text`` ``{prompt, user, model?, max_tokens?}`` -> ``{ok, cached, request_id}`` or
  ``{ok: false, error, message, retry_after_s}`` (a ``DashError``, as the page shows it);
- ``clear_cache`` ``{}`` -> ``{cleared}`` (as the process's admin);
- ``kpis`` ``{window_s, user?}`` -> the Monitor's KPI requests count over that window;
- ``load`` ``{sessions, seconds, unique}`` -> a closed loop of ``generate_text`` on
  ``sessions`` threads inside this process (the library level): ``{latencies_ms, errors}``;
- ``close`` ``{}`` -> closes the service and stops the server.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from blossom_dash import BlossomService, Caller, DashError, Settings  # noqa: E402
from blossom_dash.telemetry.query import MonitorQuery  # noqa: E402


def _text(svc: BlossomService, body: dict[str, Any]) -> dict[str, Any]:
    try:
        result = svc.generate_text(body["prompt"], model=body.get("model"), max_tokens=body.get("max_tokens"),
                                   caller=Caller(body.get("user", "tester"), role="member"))
    except DashError as exc:
        return {"ok": False, "error": type(exc).__name__, "message": str(exc),
                "retry_after_s": getattr(exc, "retry_after_s", None)}
    return {"ok": True, "cached": result.cached, "request_id": result.request_id}


def _load(svc: BlossomService, body: dict[str, Any]) -> dict[str, Any]:
    sessions, seconds = int(body["sessions"]), float(body["seconds"])
    tag = uuid.uuid4().hex[:8]
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def session(k: int) -> None:
        n = 0
        caller = Caller(f"bench-{tag}-{k}", session=f"s{k}", role="member")
        while time.monotonic() < stop_at:
            prompt = f"bench {tag} {k} {n}" if body.get("unique", True) else f"bench {k % 5}"
            t0 = time.perf_counter()
            try:
                svc.generate_text(prompt, model=body.get("model"), max_tokens=body.get("max_tokens", 16), caller=caller)
                ms = (time.perf_counter() - t0) * 1000
                with lock:
                    latencies.append(ms)
            except DashError as exc:
                with lock:
                    errors.append(type(exc).__name__)
            n += 1

    threads = [threading.Thread(target=session, args=(k,)) for k in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"latencies_ms": latencies, "errors": errors}


def main() -> None:
    try:
        svc = BlossomService(Settings())
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the test with it
        print(f"FAILED {type(exc).__name__}: {exc}", flush=True)
        sys.exit(1)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # quiet
            pass

        def do_POST(self) -> None:  # http.server's name
            op = self.path.strip("/")
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            if op == "text":
                out = _text(svc, body)
            elif op == "clear_cache":
                out = {"cleared": svc.clear_cache(caller=Caller("local"))}
            elif op == "kpis":
                users = [body["user"]] if body.get("user") else []
                q = MonitorQuery.last(float(body.get("window_s", 600)), users=users)
                out = {"requests": int(svc.monitor("kpis", q)["requests"])}
            elif op == "load":
                out = _load(svc, body)
            elif op == "close":
                svc.close()
                out = {"closed": True}
                threading.Thread(target=server.shutdown, daemon=True).start()
            else:
                self.send_error(404)
                return
            data = json.dumps(out).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(f"READY {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
