"""snippets: the "Show code" scripts compile, carry no key, and really run on the SDK."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from blossom_ai.utils.http_client import HttpxClient
from helpers import make_service
from PIL import Image

from blossom_dash import BlossomService
from blossom_dash.features.snippets import chat_messages, code_for_image, code_for_text

SECRET = "sk_snippet_secret_4242"
REAL = "https://gen.pollinations.ai"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BlossomService]:
    """A service whose embedded demo backend the scripts are redirected to."""
    with make_service(tmp_path_factory.mktemp("snippets")) as svc:
        yield svc


@pytest.fixture
def redirected(demo: BlossomService, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The SDK's HTTP client sends gen.pollinations.ai requests to the demo backend.

    As ``test_demo_backend.test_through_the_sdk`` does, but on the class the script's
    ``BlossomClient`` builds itself. Returns the URLs the SDK asked for.
    """
    base, seen = demo.backend.base_url, []

    def swap(name: str) -> None:
        original = getattr(HttpxClient, name)

        def method(self: HttpxClient, *args: Any, **kwargs: Any) -> Any:
            if name in ("request", "stream"):
                method_, url, *rest = args
                seen.append(url)
                return original(self, method_, url.replace(REAL, base), *rest, **kwargs)
            url, *rest = args
            seen.append(url)
            return original(self, url.replace(REAL, base), *rest, **kwargs)

        monkeypatch.setattr(HttpxClient, name, method)

    for name in ("get", "post", "request", "stream"):
        swap(name)
    monkeypatch.setenv("POLLINATIONS_API_KEY", SECRET)
    return seen


def run_script(code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Execute a generated script's module body, then its ``main()`` coroutine."""
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": "snippet"}
    exec(compile(code, "snippet.py", "exec"), namespace)  # the code under test
    return asyncio.run(namespace["main"]())


class TestCodeForText:
    def test_compiles_and_carries_no_key(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The script compiles, reads the key from the environment and never holds it."""
        monkeypatch.setenv("POLLINATIONS_API_KEY", SECRET)
        code = code_for_text("Summarise Q3", "openai", system="Be brief", max_tokens=300, temperature=0.2, seed=9)
        compile(code, "snippet.py", "exec")
        assert SECRET not in code and "sk_" not in code.replace("sk_...", "")
        assert 'os.environ["POLLINATIONS_API_KEY"]' in code

    def test_temperature_and_seed_travel_in_extra_params(self) -> None:
        """temperature/seed go through extra_params (BLOSSOM_SDK.md), and are left out when unset."""
        code = code_for_text("Hi", "openai", temperature=0.2, seed=9)
        assert "extra_params={'temperature': 0.2, 'seed': 9}" in code
        assert "temperature=" not in code.replace("'temperature'", "")
        assert "extra_params" not in code_for_text("Hi", "openai").split("async def main")[1]

    def test_history_and_system_are_sent_in_order(self) -> None:
        """The script sends system, earlier turns, then the prompt, as the Playground did."""
        history = [{"role": "user", "content": "one"}, {"role": "assistant", "content": "two"},
                   {"role": "tool", "content": "dropped"}, {"role": "user", "content": "  "}]
        assert chat_messages("three", system="sys", messages=history) == [
            {"role": "system", "content": "sys"}, {"role": "user", "content": "one"},
            {"role": "assistant", "content": "two"}, {"role": "user", "content": "three"}]

    def test_hostile_text_stays_data(self) -> None:
        """Quotes, triple quotes and backslashes in prompt or model cannot break out of the literals."""
        nasty = 'a """ b \' c \\ d\n"); import os; os.remove("x")  #'
        code = code_for_text(nasty, 'm"""odel', system=nasty, messages=[{"role": "user", "content": nasty}])
        namespace: dict[str, Any] = {"__name__": "snippet"}
        exec(compile(code, "snippet.py", "exec"), namespace)  # defines, runs nothing
        assert namespace["MESSAGES"][-1] == {"role": "user", "content": nasty.strip()}

    def test_demo_models_get_a_note(self) -> None:
        """A demo model name comes with a note that the SDK calls the real service."""
        assert "offline demo backend" in code_for_text("Hi", "demo-swift")
        assert "offline demo backend" not in code_for_text("Hi", "openai")

    def test_runs_against_the_demo_backend(self, redirected: list[str], tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
        """Executed on the real SDK (URL redirected to the demo backend) it returns the answer."""
        code = code_for_text("Explain a moving window", "demo-swift", system="Be brief", max_tokens=120,
                             temperature=0.5, seed=3, messages=[{"role": "user", "content": "hello"},
                                                                 {"role": "assistant", "content": "hi"}])
        text = run_script(code, tmp_path, monkeypatch)
        assert isinstance(text, str) and text.startswith("**Demo backend: synthetic answer from `demo-swift`**")
        assert any(url.endswith("/v1/chat/completions") for url in redirected)

    def test_same_answer_as_the_dashboard(self, demo: BlossomService, redirected: list[str], tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
        """With a seed, the script gets exactly the answer the dashboard showed."""
        params = {"model": "demo-balanced", "system": "Answer as a list", "max_tokens": 200, "temperature": None,
                  "seed": 11, "messages": [{"role": "user", "content": "Earlier"},
                                           {"role": "assistant", "content": "Reply"}]}
        shown = demo.generate_text("Compare caches", **params).text
        assert run_script(code_for_text("Compare caches", **params), tmp_path, monkeypatch) == shown


class TestCodeForImage:
    def test_compiles_and_carries_no_key(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The image script compiles and reads the key from the environment."""
        monkeypatch.setenv("POLLINATIONS_API_KEY", SECRET)
        code = code_for_image("a lighthouse", "flux", 512, 768, 7)
        compile(code, "snippet.py", "exec")
        assert SECRET not in code and 'os.environ["POLLINATIONS_API_KEY"]' in code
        assert "SEED = 7" in code and "width=512, height=768" in code

    def test_no_seed_means_a_random_one(self) -> None:
        """Without a seed the script picks one per run (the SDK would always send 42)."""
        assert "SEED = random.randint(0, 2**31 - 1)" in code_for_image("a fox", "flux")

    def test_runs_and_saves_the_same_image(self, demo: BlossomService, redirected: list[str], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
        """Executed on the SDK it draws the very image the dashboard showed, and saves it."""
        shown = demo.generate_image("a/b lighthouse at dawn", model="demo-sketch", width=96, height=64, seed=5)
        code = code_for_image("a/b lighthouse at dawn", "demo-sketch", 96, 64, 5)
        data = run_script(code, tmp_path, monkeypatch)
        assert data == shown.data
        assert Image.open(io.BytesIO(data)).size == (96, 64)
        namespace: dict[str, Any] = {"__name__": "__main__"}
        exec(compile(code, "snippet.py", "exec"), namespace)  # the script's own entry point saves the file
        assert (tmp_path / "blossom-demo-sketch-5.png").read_bytes() == shown.data
