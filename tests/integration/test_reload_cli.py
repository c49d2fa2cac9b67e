"""SIGHUP config reload and the `embedhost models` CLI, against a real server process
(fake engine workers, so that starts are quick)."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml
from typer.testing import CliRunner

from embedhost.cli import cli
from tests.support import MINILM
from tests.support.app import fake_model
from tests.support.servers import LiveServer, start_server, stop_server
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("reload")
    srv = start_server(tmp, {"models": [fake_model("m", version="1"), fake_model("n")]})
    yield srv
    stop_server(srv)


def _wait(cond: Callable[[], bool], what: str, timeout: float = 60) -> None:
    wait_until(cond, what, timeout=timeout, every=0.1)


def _group(url: str, name: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{url}/admin/models/{name}", timeout=10).json()
    return body


def _tag(url: str, **body: Any) -> str:
    r = httpx.post(f"{url}/v1/embeddings", json={"input": "hi", "model": "m", **body}, timeout=30)
    assert r.status_code == 200, r.text
    return r.headers["x-embedhost-model"]


def test_sighup_applies_the_difference(server: LiveServer) -> None:
    url = server.url
    cfg_path = server.log_path.parent / "config.yaml"
    config = yaml.safe_load(cfg_path.read_text())
    v1_pid = _group(url, "m")["versions"][0]["replicas"][0]["pid"]
    n_pid = _group(url, "n")["versions"][0]["replicas"][0]["pid"]
    # Version 2 becomes current (listed first), 3 takes 50% as an A/B arm, "n" goes away.
    config["models"] = [
        fake_model("m", version="2", traffic=50),
        fake_model("m", version="3", traffic=50),
    ]
    cfg_path.write_text(yaml.safe_dump(config))
    server.proc.send_signal(signal.SIGHUP)
    _wait(lambda: _group(url, "m")["current"] == "2", "m@2 to become current")
    _wait(
        lambda: (
            {v["version"]: v["status"] for v in _group(url, "m")["versions"]}.get("1") == "stopped"
        ),
        "m@1 to stop",
    )
    group = _group(url, "m")
    assert group["traffic"] == {"2": 50, "3": 50}
    tags = {_tag(url, user=f"u{i}") for i in range(40)}
    assert tags == {"m@2", "m@3"}
    assert httpx.get(f"{url}/admin/models/n", timeout=10).status_code == 404
    r = httpx.post(f"{url}/v1/embeddings", json={"input": "x", "model": "n"}, timeout=10)
    assert r.status_code == 404
    _wait(lambda: not psutil.pid_exists(v1_pid) and not psutil.pid_exists(n_pid), "pids gone")
    assert server.proc.poll() is None  # SIGHUP did not end the process

    # A config that does not validate is refused; what runs stays as it is.
    cfg_path.write_text("models: [{name: m}]\n")
    server.proc.send_signal(signal.SIGHUP)
    _wait(lambda: "config reload refused" in server.log(), "the refusal in the log")
    assert _group(url, "m")["current"] == "2"
    assert {v["version"] for v in _group(url, "m")["versions"] if v["status"] == "ready"} == {
        "2",
        "3",
    }


@pytest.fixture
def split_server(tmp_path: Path) -> Iterator[LiveServer]:
    """Its own server, not the one SIGHUP changed: m@2 current, m@3 beside it."""
    models = [fake_model("m", version="2", traffic=50), fake_model("m", version="3", traffic=50)]
    srv = start_server(tmp_path, {"models": models})
    yield srv
    stop_server(srv)


def test_models_cli(split_server: LiveServer) -> None:
    url = split_server.url
    assert _group(url, "m")["current"] == "2"
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(cli, ["models", *args, "--url", url])
        assert result.exit_code == 0, result.output
        return result.output

    listing = run("list")
    assert "MODEL" in listing
    assert "current" in listing
    out = run("load", "m", MINILM, "--version", "9", "--engine", "plugin:tests.fakes:FakeEngine")
    assert "m@9: ready" in out
    run("split", "m", "2=1", "9=1")
    assert _group(url, "m")["traffic"] == {"2": 1.0, "9": 1.0}
    run("split", "m")
    assert _group(url, "m")["traffic"] == {}
    run("shadow", "m", "9")
    assert _group(url, "m")["shadow"]["version"] == "9"
    run("shadow", "m")
    assert _group(url, "m")["shadow"] is None
    assert "current 9" in run("promote", "m", "9")
    assert _tag(url) == "m@9"
    assert "current 2" in run("rollback", "m")
    assert _tag(url) == "m@2"
    assert "stopped" in run("unload", "m", "3")
    failed = runner.invoke(cli, ["models", "promote", "m", "nope", "--url", url])
    assert failed.exit_code == 1
    assert "404" in failed.output
