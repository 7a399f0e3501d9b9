"""The deployment: compose.yaml, the Dockerfile, nginx in front of a real Streamlit, the entrypoint.

Docker is not available here, so the compose file and the Dockerfile are checked as
text (parsed with PyYAML); the nginx config is checked by Debian's real ``nginx -t`` and
then served by a real nginx in front of a real Streamlit server (started through the
container's entrypoint, in local mode on loopback) and a second stand-in replica.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from urllib.parse import urlsplit

import pytest
import yaml

from blossom_dash.ui import entrypoint, launch

ROOT = Path(__file__).resolve().parent.parent
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
APPS = ("app1", "app2")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env_example() -> dict[str, str]:
    out = {}
    for line in (ROOT / "deploy" / ".env.example").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


_VAR = re.compile(r"\$\{(\w+)(?::?[-?][^}]*)?\}")


def _interpolate(text: str, values: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?message}`` with ``values`` (enough for these checks)."""
    def one(m: re.Match[str]) -> str:
        whole = m.group(0)
        if m.group(1) in values and values[m.group(1)]:
            return values[m.group(1)]
        return whole.split(":-", 1)[1][:-1] if ":-" in whole else ""
    return _VAR.sub(one, text)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))


class TestCompose:
    def test_services(self, compose: dict) -> None:
        """Two app replicas, nginx, Redis and PostgreSQL; the replicas run the repo's image."""
        services = compose["services"]
        assert set(services) >= {*APPS, "nginx", "redis", "postgres"}
        for app in APPS:
            assert services[app]["build"] == ".", app
        assert services["postgres"]["image"].startswith("postgres:15")
        assert services["redis"]["image"].startswith("redis:7")

    def test_postgres_keeps_its_data_in_a_named_volume(self, compose: dict) -> None:
        """PostgreSQL's data directory is a named volume, declared at the top level."""
        mounts = [v.split(":") for v in compose["services"]["postgres"]["volumes"]]
        named = [m[0] for m in mounts if m[1] == "/var/lib/postgresql/data"]
        assert named and named[0] in compose["volumes"]

    def test_each_replica_has_its_own_data_volume(self, compose: dict) -> None:
        """The event journal is one process's: the replicas never share /app/data."""
        volumes = [next(v.split(":")[0] for v in compose["services"][a]["volumes"] if v.endswith(":/app/data"))
                   for a in APPS]
        assert len(set(volumes)) == len(APPS) and set(volumes) <= set(compose["volumes"])

    def test_replicas_share_the_cookie_secret_and_the_stores(self, compose: dict) -> None:
        """Every replica gets the cookie key from one .env variable, and the DB/Redis URLs of the compose services."""
        envs = [compose["services"][a]["environment"] for a in APPS]
        assert envs[0] == envs[1]
        env = envs[0]
        assert _VAR.fullmatch(env[entrypoint.COOKIE_VARIABLE]).group(1) == "COOKIE_SECRET"
        values = _env_example()
        db = urlsplit(_interpolate(env["BLOSSOM_DASH_DATABASE_URL"], values))
        pg_env = compose["services"]["postgres"]["environment"]
        assert db.scheme == "postgresql+psycopg" and db.hostname == "postgres" and db.port == 5432
        assert db.username == pg_env["POSTGRES_USER"] and db.path == "/" + pg_env["POSTGRES_DB"]
        assert db.password == values["POSTGRES_PASSWORD"]
        assert _VAR.fullmatch(pg_env["POSTGRES_PASSWORD"]).group(1) == "POSTGRES_PASSWORD"
        redis = urlsplit(_interpolate(env["BLOSSOM_DASH_REDIS_URL"], values))
        assert redis.scheme == "redis" and redis.hostname == "redis" and redis.password == values["REDIS_PASSWORD"]
        assert "REDIS_PASSWORD" in compose["services"]["redis"]["command"][-1]

    def test_secrets_must_be_set(self, compose: dict) -> None:
        """A missing secret stops ``docker compose`` (``${VAR:?}``) instead of starting with an empty one."""
        text = (ROOT / "compose.yaml").read_text(encoding="utf-8")
        for var in ("COOKIE_SECRET", "POSTGRES_PASSWORD", "REDIS_PASSWORD"):
            uses = re.findall(r"\$\{" + var + r"(:?[-?])?", text)
            assert uses and all(u == ":?" for u in uses), var

    def test_every_variable_is_in_the_example_env(self) -> None:
        """deploy/.env.example names every variable compose.yaml reads."""
        used = set(_VAR.findall((ROOT / "compose.yaml").read_text(encoding="utf-8")))
        assert used <= set(_env_example()), used - set(_env_example())

    def test_healthchecks_and_start_order(self, compose: dict) -> None:
        """Each service has a healthcheck; the replicas wait for healthy stores, nginx for healthy replicas."""
        services = compose["services"]
        for name in (*APPS, "nginx", "redis", "postgres"):
            assert services[name]["healthcheck"]["test"], name
        assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
        for app in APPS:
            assert "blossom_dash.health" in services[app]["healthcheck"]["test"]
            assert services[app]["depends_on"] == {"postgres": {"condition": "service_healthy"},
                                                   "redis": {"condition": "service_healthy"}}
        assert {a: {"condition": "service_healthy"} for a in APPS} == services["nginx"]["depends_on"]

    def test_only_nginx_publishes_a_port(self, compose: dict) -> None:
        """Browsers reach the replicas through the proxy only; Redis and PostgreSQL stay on the compose network."""
        services = compose["services"]
        assert services["nginx"]["ports"]
        assert [n for n, s in services.items() if "ports" in s] == ["nginx"]
        assert "./deploy/nginx.conf:/etc/nginx/nginx.conf:ro" in services["nginx"]["volumes"]

    def test_nginx_upstream_lists_every_replica(self, compose: dict) -> None:
        """Each app service is one ``server`` line of nginx's upstream, on the port the image exposes."""
        conf = (ROOT / "deploy" / "nginx.conf").read_text(encoding="utf-8")
        servers = re.findall(r"^\s*server\s+([\w.-]+):(\d+)", conf, re.MULTILINE)
        apps = sorted(n for n, s in compose["services"].items() if s.get("build") == ".")
        assert sorted(h for h, _ in servers) == apps
        assert {p for _, p in servers} == {"8501"}


class TestDockerfile:
    @pytest.fixture(scope="class")
    def lines(self) -> list[str]:
        text = (ROOT / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
        return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]

    def test_base_user_and_port(self, lines: list[str]) -> None:
        """python:3.11-slim, a non-root user before the app starts, port 8501 exposed."""
        assert lines[0] == "FROM python:3.11-slim"
        users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
        assert users and users[-1] not in {"root", "0"} and not users[-1].startswith(("0:", "root:"))
        assert "EXPOSE 8501" in lines

    def test_runtime_dependencies_only(self, lines: list[str]) -> None:
        """pip installs requirements.txt, never the dev requirements."""
        runs = " ".join(ln for ln in lines if ln.startswith("RUN "))
        assert "pip install -r requirements.txt" in runs and "requirements-dev" not in runs

    def test_healthcheck_and_command(self, lines: list[str]) -> None:
        """A HEALTHCHECK runs the readiness module; the server listens on 0.0.0.0 through the entrypoint."""
        health = next(ln for ln in lines if ln.startswith("HEALTHCHECK "))
        assert "blossom_dash.health" in health and "/_stcore" not in health.split("--streamlit")[0]
        assert any(ln.startswith("ENTRYPOINT ") and "blossom_dash.ui.entrypoint" in ln for ln in lines)
        cmd = next(ln for ln in lines if ln.startswith("CMD "))
        assert '"--server.address", "0.0.0.0"' in cmd and '"8501"' in cmd

    def test_copies_exist_and_secrets_stay_out(self, lines: list[str]) -> None:
        """Every COPY source exists; .dockerignore keeps secrets and data out of the build context."""
        for ln in lines:
            if ln.startswith("COPY "):
                sources = [p for p in ln.split()[1:-1] if not p.startswith("--")]
                assert all((ROOT / s).exists() for s in sources), ln
        ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        for pattern in (".env", ".streamlit/secrets.toml", "data/", ".git"):
            assert pattern in ignored, pattern


# ----- nginx ---------------------------------------------------------------------------


def _local_nginx_conf(directory: Path, port: int, upstreams: dict[str, int]) -> Path:
    """deploy/nginx.conf with the compose host names swapped for loopback ports, and files in ``directory``."""
    text = (ROOT / "deploy" / "nginx.conf").read_text(encoding="utf-8")
    for name, upstream_port in upstreams.items():
        text, n = re.subn(rf"server {name}:8501\b", f"server 127.0.0.1:{upstream_port}", text)
        assert n == 1, name
    text, n = re.subn(r"listen 80;", f"listen 127.0.0.1:{port};", text)
    assert n == 1
    temp = "\n".join(f"    {kind}_temp_path {directory / kind};" for kind in ("client_body", "proxy", "fastcgi",
                                                                                "uwsgi", "scgi"))
    text, n = re.subn(r"^http \{", "http {\n" + temp, text, flags=re.MULTILINE)
    assert n == 1
    path = directory / "nginx.conf"
    path.write_text(f"pid {directory / 'nginx.pid'};\n" + text, encoding="utf-8")
    return path


def _nginx(conf: Path, *extra: str) -> list[str]:
    return [str(NGINX), "-c", str(conf), "-p", str(conf.parent), "-e", "stderr", *extra]


needs_nginx = pytest.mark.skipif(NGINX is None, reason="needs nginx (scripts/test.sh installs Debian's nginx-light)")


@needs_nginx
def test_nginx_config_passes_nginx_t(tmp_path: Path) -> None:
    """Debian's real ``nginx -t`` accepts deploy/nginx.conf (compose host names swapped for loopback)."""
    conf = _local_nginx_conf(tmp_path, _free_port(), {"app1": _free_port(), "app2": _free_port()})
    done = subprocess.run(_nginx(conf, "-t"), capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "test is successful" in done.stderr


class _StandIn(BaseHTTPRequestHandler):
    """A second replica that answers every GET with its name and keeps the headers it saw."""

    seen: list[dict[str, str]] = []

    def do_GET(self) -> None:
        type(self).seen.append({k.lower(): v for k, v in self.headers.items()})
        body = b"stand-in"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@dataclass
class Proxy:
    port: int
    streamlit_port: int

    def get(self, path: str, cookie: str | None = None, host: str | None = None) -> tuple[int, dict[str, str], str]:
        """A raw HTTP/1.1 GET through the proxy: (status, headers, body)."""
        headers = {"Host": host or f"127.0.0.1:{self.port}", "Connection": "close"}
        if cookie:
            headers["Cookie"] = f"blossom_route={cookie}"
        status, got, body = _raw(self.port, f"GET {path} HTTP/1.1", headers)
        return status, got, body


def _raw(port: int, request_line: str, headers: dict[str, str],
         read_all: bool = True) -> tuple[int, dict[str, str], str]:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall((request_line + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data or read_all:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    got: dict[str, str] = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        got[k.strip().lower()] = (got[k.strip().lower()] + ", " if k.strip().lower() in got else "") + v.strip()
    return status, got, body.decode("utf-8", "replace")


def _wait_http(url: str, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout_s:g} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    """nginx with deploy/nginx.conf in front of a real Streamlit (app1, via the entrypoint) and a stand-in (app2)."""
    if NGINX is None:
        pytest.skip("needs nginx (scripts/test.sh installs Debian's nginx-light)")
    tmp = tmp_path_factory.mktemp("proxy")
    st_port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BLOSSOM_DASH_", "STREAMLIT_"))}
    # Anything Streamlit might fetch off the machine (its external-IP lookup) goes to a dead loopback port.
    env.update({"HOME": str(tmp), "BLOSSOM_DASH_DATA_DIR": str(tmp / "data"), "BLOSSOM_DASH_BACKEND": "demo",
                "BLOSSOM_DASH_DEMO_LATENCY": "false", "HTTP_PROXY": "http://127.0.0.1:9",
                "HTTPS_PROXY": "http://127.0.0.1:9", "NO_PROXY": "127.0.0.1,localhost"})
    streamlit = subprocess.Popen(
        [sys.executable, "-m", "blossom_dash.ui.entrypoint", "--server.address", "127.0.0.1", "--server.port",
         str(st_port), "--server.headless", "true"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=(tmp / "streamlit.log").open("wb"))
    stand_in = ThreadingHTTPServer(("127.0.0.1", 0), _StandIn)
    Thread(target=stand_in.serve_forever, daemon=True).start()
    port = _free_port()
    conf = _local_nginx_conf(tmp, port, {"app1": st_port, "app2": stand_in.server_address[1]})
    nginx = subprocess.Popen(_nginx(conf, "-g", "daemon off;"), stdout=subprocess.DEVNULL,
                             stderr=(tmp / "nginx.log").open("wb"))
    try:
        _wait_http(f"http://127.0.0.1:{st_port}/_stcore/health", 90, streamlit)
        _wait_http(f"http://127.0.0.1:{port}/_proxy/health", 30, nginx)
    except RuntimeError as exc:
        _stop(nginx)
        _stop(streamlit)
        stand_in.shutdown()
        logs = {n: (tmp / n).read_text(errors="replace")[-800:] for n in ("streamlit.log", "nginx.log")}
        pytest.fail(f"the proxy did not come up: {exc}; {logs}")
    yield Proxy(port=port, streamlit_port=st_port)
    _stop(nginx)
    _stop(streamlit)
    stand_in.shutdown()


def _routes(proxy: Proxy, n: int = 24) -> dict[str, str]:
    """Route cookie ``r<i>`` -> which replica answered ``/_stcore/health`` for it."""
    out = {}
    for i in range(n):
        status, _, body = proxy.get("/_stcore/health", cookie=f"r{i}")
        assert status == 200
        out[f"r{i}"] = "streamlit" if body.strip() == "ok" else body.strip()
    return out


@needs_nginx
class TestProxy:
    def test_streamlit_health_through_the_proxy(self, proxy: Proxy) -> None:
        """``/_stcore/health`` of the real Streamlit answers ``ok`` through nginx, and the proxy's own check too."""
        routes = _routes(proxy)
        cookie = next(k for k, v in routes.items() if v == "streamlit")
        assert proxy.get("/_stcore/health", cookie=cookie)[2].strip() == "ok"
        assert proxy.get("/_proxy/health")[0:3:2] == (200, "ok\n")

    def test_sessions_are_sticky_and_spread(self, proxy: Proxy) -> None:
        """The same route cookie always reaches the same replica; different ones reach both replicas."""
        first, second = _routes(proxy), _routes(proxy)
        assert first == second
        assert set(first.values()) == {"streamlit", "stand-in"}

    def test_a_new_browser_gets_a_route_cookie_and_keeps_it(self, proxy: Proxy) -> None:
        """No cookie: nginx sets ``blossom_route``; with it, every request lands where the first one did."""
        status, headers, body = proxy.get("/_stcore/health")
        assert status == 200
        # (Streamlit's own _streamlit_xsrf cookie may come along in the same header.)
        match = re.search(r"(?:^|, )blossom_route=([0-9a-f]{32}); Path=/; HttpOnly; SameSite=Lax(?:,|$)",
                          headers["set-cookie"])
        assert match, headers["set-cookie"]
        again = [proxy.get("/_stcore/health", cookie=match.group(1)) for _ in range(5)]
        assert {b for _, _, b in again} == {body}
        # A browser that has one is not given another.
        assert all("blossom_route" not in h.get("set-cookie", "") for _, h, _ in again)

    def test_headers_reach_the_replica(self, proxy: Proxy) -> None:
        """The replica sees the browser's Host with its port and the client's address."""
        routes = _routes(proxy)
        cookie = next(k for k, v in routes.items() if v == "stand-in")
        _StandIn.seen.clear()
        proxy.get("/", cookie=cookie, host=f"dash.example:{proxy.port}")
        assert _StandIn.seen[-1]["host"] == f"dash.example:{proxy.port}"
        assert _StandIn.seen[-1]["x-forwarded-for"] == "127.0.0.1"

    def test_websocket_upgrade_reaches_streamlit(self, proxy: Proxy) -> None:
        """A browser's websocket handshake to ``/_stcore/stream``, from a public host name on a non-default
        port, is answered ``101 Switching Protocols`` by Streamlit through nginx (Origin matches Host)."""
        routes = _routes(proxy)
        cookie = next(k for k, v in routes.items() if v == "streamlit")
        host = f"dash.example:{proxy.port}"
        status, headers, _ = _raw(proxy.port, "GET /_stcore/stream HTTP/1.1", {
            "Host": host, "Origin": f"http://{host}", "Upgrade": "websocket", "Connection": "Upgrade",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Protocol": "streamlit", "Cookie": f"blossom_route={cookie}"}, read_all=False)
        assert status == 101, headers
        assert headers["upgrade"].lower() == "websocket"
        assert headers["sec-websocket-accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455's own example

    def test_readiness_check_sees_streamlit(self, proxy: Proxy, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
        """``--streamlit`` checks the real server's ``/_stcore/health``."""
        from blossom_dash import health

        monkeypatch.delenv("BLOSSOM_DASH_REDIS_URL", raising=False)
        monkeypatch.delenv("BLOSSOM_DASH_DATABASE_URL", raising=False)
        assert health.main(["--streamlit", f"http://127.0.0.1:{proxy.streamlit_port}"]) == 0
        assert re.search(r"^streamlit\s+ready\s", capsys.readouterr().out, re.MULTILINE)


# ----- the entrypoint --------------------------------------------------------------------

AUTH_ENV = {
    "BLOSSOM_DASH_COOKIE_SECRET": "c" * 40,
    "BLOSSOM_DASH_AUTH_REDIRECT_URI": "http://dash.example:8080/oauth2callback",
    "BLOSSOM_DASH_AUTH_CLIENT_ID": "client-1",
    "BLOSSOM_DASH_AUTH_CLIENT_SECRET": "client-secret-value",
    "BLOSSOM_DASH_AUTH_SERVER_METADATA_URL": "https://id.example/.well-known/openid-configuration",
}
PUBLIC = ["--server.address", "0.0.0.0", "--server.port", "8501"]


class TestEntrypoint:
    def test_sign_in_from_the_environment(self, tmp_path: Path) -> None:
        """The four AUTH variables and the cookie secret make an [auth] section; 0.0.0.0 is then allowed."""
        decided = entrypoint.plan(PUBLIC, AUTH_ENV, tmp_path, tmp_path)
        assert decided.auth == {"redirect_uri": AUTH_ENV["BLOSSOM_DASH_AUTH_REDIRECT_URI"], "client_id": "client-1",
                                "client_secret": "client-secret-value", "cookie_secret": "c" * 40,
                                "server_metadata_url": AUTH_ENV["BLOSSOM_DASH_AUTH_SERVER_METADATA_URL"]}
        assert decided.env == {"STREAMLIT_SERVER_COOKIE_SECRET": "c" * 40}
        path = entrypoint.write_secrets(decided.auth)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert tomllib.loads(path.read_text(encoding="utf-8")) == {"auth": decided.auth}
        args = [*decided.args, "--secrets.files", str(path)]
        assert launch.refusal(args, {}, tmp_path, tmp_path) is None
        assert launch.refusal(PUBLIC, {}, tmp_path, tmp_path)  # the same address without it is refused

    def test_an_existing_secrets_file_keeps_its_providers(self, tmp_path: Path) -> None:
        """A mounted secrets.toml's providers stay; the shared cookie secret replaces its own; it is read first."""
        (tmp_path / ".streamlit").mkdir()
        base = tmp_path / ".streamlit" / "secrets.toml"
        base.write_text('POLLINATIONS_API_KEY = "sk_x"\n[auth]\ncookie_secret = "old"\n'
                        'redirect_uri = "http://h/oauth2callback"\n[auth.google]\nclient_id = "g"\n'
                        'client_secret = "s"\nserver_metadata_url = "https://g/.well-known/openid-configuration"\n')
        env = {"BLOSSOM_DASH_COOKIE_SECRET": "k" * 32}
        decided = entrypoint.plan(PUBLIC, env, tmp_path, tmp_path / "home")
        assert decided.auth is not None and decided.auth["cookie_secret"] == "k" * 32
        assert decided.auth["google"]["client_id"] == "g"
        assert decided.secrets_files == [base]

    def test_cookie_secret_alone_is_not_sign_in(self, tmp_path: Path) -> None:
        """Without a provider, the cookie secret still reaches server.cookieSecret, and no [auth] is written."""
        decided = entrypoint.plan(PUBLIC, {"BLOSSOM_DASH_COOKIE_SECRET": "k" * 32,
                                           "STREAMLIT_SERVER_COOKIE_SECRET": "set-by-hand"}, tmp_path, tmp_path)
        assert decided.auth is None and decided.env == {}  # one set by hand is left alone

    @pytest.mark.parametrize(("env", "names"), [
        ({k: v for k, v in AUTH_ENV.items() if k != "BLOSSOM_DASH_AUTH_CLIENT_SECRET"},
         ["BLOSSOM_DASH_AUTH_CLIENT_SECRET"]),
        ({k: v for k, v in AUTH_ENV.items() if k != "BLOSSOM_DASH_COOKIE_SECRET"}, ["BLOSSOM_DASH_COOKIE_SECRET"]),
        ({**AUTH_ENV, "BLOSSOM_DASH_COOKIE_SECRET": "short-secret"}, ["BLOSSOM_DASH_COOKIE_SECRET", "32"]),
    ], ids=["half-configured", "no-cookie-secret", "short-cookie-secret"])
    def test_refusals_name_the_variable_not_its_value(self, tmp_path: Path, env: dict[str, str],
                                                      names: list[str]) -> None:
        """A sign-in that cannot work is refused, naming what to set and quoting no secret."""
        with pytest.raises(entrypoint.Refused) as info:
            entrypoint.plan(PUBLIC, env, tmp_path, tmp_path)
        assert all(n in str(info.value) for n in names)
        assert not any(v in str(info.value) for k, v in env.items() if "SECRET" in k)

    def test_toml_round_trip(self) -> None:
        """Odd strings survive the copy: quotes, backslashes, newlines, DEL, non-ASCII, odd keys."""
        data = {"auth": {"cookie_secret": 'a"b\\c\nd\x7fe\x01 ✿ 😀', "odd key": 1, "flag": True,
                         "prov.x": {"client_id": "x", "scopes": ["openid", "email"]}}}
        assert tomllib.loads(entrypoint.to_toml(data)) == data

    def test_the_container_refuses_to_serve_without_sign_in(self, tmp_path: Path) -> None:
        """``python -m blossom_dash.ui.entrypoint --server.address 0.0.0.0`` without sign-in exits 2 and says why."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BLOSSOM_DASH_", "STREAMLIT_"))}
        env.update({"HOME": str(tmp_path), "PYTHONPATH": str(ROOT), "BLOSSOM_DASH_COOKIE_SECRET": "z" * 40})
        done = subprocess.run([sys.executable, "-m", "blossom_dash.ui.entrypoint", *PUBLIC], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2
        assert "0.0.0.0" in done.stderr and "z" * 40 not in done.stderr + done.stdout

    def test_a_refused_sign_in_exits_2_without_the_secret(self, tmp_path: Path) -> None:
        """A half-configured sign-in stops the container with status 2 and names the missing variable."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BLOSSOM_DASH_", "STREAMLIT_"))}
        env.update({"HOME": str(tmp_path), "PYTHONPATH": str(ROOT), **AUTH_ENV})
        del env["BLOSSOM_DASH_AUTH_CLIENT_ID"]
        done = subprocess.run([sys.executable, "-m", "blossom_dash.ui.entrypoint", *PUBLIC], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and "BLOSSOM_DASH_AUTH_CLIENT_ID" in done.stderr
        assert "client-secret-value" not in done.stderr and "c" * 40 not in done.stderr
