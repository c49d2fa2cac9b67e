"""Security of a real `embedhost serve` process: keys with the OpenAI SDK, a schemathesis run
against its own OpenAPI schema, slow clients, TLS, the start rule, and its logs."""

from __future__ import annotations

import json
import re
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from schemathesis.core.warnings import SchemathesisWarning

from embedhost.security.keys import new_key_entry
from tests.support import ROOT
from tests.support.app import fake_model
from tests.support.servers import (
    LiveServer,
    free_port,
    repo_env,
    serve_command,
    spawn,
    start_server,
    stop_server,
    wait_answering,
)

pytestmark = pytest.mark.slow

KEY, ENTRY = new_key_entry("sdk", ["embed", "admin", "metrics"])
SECRET_TEXT = "confidential-input-text-93ab"


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("keyed")
    keys_file = tmp / "keys.yaml"
    keys_file.write_text(yaml.safe_dump([ENTRY.model_dump()]))
    server = start_server(
        tmp,
        {
            "models": [fake_model("fake", max_input_tokens=16)],
            "auth": {"keys_file": str(keys_file)},
            "server": {"timeout_header_read_s": 1, "timeout_body_read_s": 1, "log_level": "debug"},
            "limits": {"max_inputs_per_request": 64, "max_body_bytes": 65536},
            "jobs": {"data_dir": str(tmp / "jobs")},
        },
    )
    yield server
    stop_server(server)


def test_openai_sdk_with_key(keyed_server: LiveServer) -> None:
    client = openai.OpenAI(base_url=f"{keyed_server.url}/v1", api_key=KEY, max_retries=0)
    out = client.embeddings.create(model="fake", input=[SECRET_TEXT, "two"])
    assert len(out.data) == 2
    assert len(out.data[0].embedding) == 32
    assert [m.id for m in client.models.list().data] == ["fake"]
    wrong = openai.OpenAI(base_url=f"{keyed_server.url}/v1", api_key="eh_wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        wrong.embeddings.create(model="fake", input=SECRET_TEXT)
    assert info.value.status_code == 401
    assert info.value.code == "invalid_api_key"


def test_schemathesis_against_own_schema(keyed_server: LiveServer, tmp_path: Path) -> None:
    """Every operation, a few hundred cases each: no 5xx, responses as the schema says.

    positive_data_acceptance is left out: the schema cannot know a model's dimensions or
    vocabulary, so schema-valid requests may rightly get a 400."""
    exe = Path(sys.executable).with_name("schemathesis")
    # The admin routes take a model name and version in the path: give the fuzzer the
    # served ones, so that it reaches their logic instead of 404s. A load needs a path that
    # exists, so most generated loads are rightly refused: that warning is left out; and a
    # load too big for memory is rightly a 507.
    warnings = ", ".join(
        f'"{w.value}"'
        for w in SchemathesisWarning
        if w.value not in ("validation_mismatch", "low_valid_rate")  # the latter is opt-in
    )
    # The Batch API's ids likewise: a file and a batch that exist (and another file for
    # DELETE to delete), so that those routes are fuzzed past their 404.
    client = openai.OpenAI(base_url=f"{keyed_server.url}/v1", api_key=KEY, max_retries=0)
    line = json.dumps(
        {"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {"input": "x"}}
    ).encode()
    kept = client.files.create(file=("in.jsonl", line), purpose="batch").id
    doomed = client.files.create(file=("gone.jsonl", line), purpose="batch").id
    batch = client.batches.create(
        input_file_id=kept, endpoint="/v1/embeddings", completion_window="24h"
    ).id
    (tmp_path / "schemathesis.toml").write_text(
        '[parameters]\n"path.name" = "fake"\n"path.version" = "1"\n'
        f'"path.file_id" = "{kept}"\n"path.batch_id" = "{batch}"\n\n'
        f"[warnings]\ndisplay = [{warnings}]\n\n"
        '[[operations]]\ninclude-name = "POST /admin/models/{name}/versions"\n'
        'checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "507"]\n\n'
        '[[operations]]\ninclude-name = "DELETE /v1/files/{file_id}"\n'
        f'parameters = {{"path.file_id" = "{doomed}"}}\n'
    )
    r = subprocess.run(
        [
            str(exe), "run", f"{keyed_server.url}/openapi.json",
            "--checks", "all", "--exclude-checks", "positive_data_acceptance",
            "--max-examples", "300", "--workers", "2", "--seed", "4",
            "--generation-database", "none", "--no-color",
            "--header", f"Authorization: Bearer {KEY}",
        ],
        capture_output=True, text=True, cwd=tmp_path, timeout=240,
    )  # fmt: skip
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-8000:]
    assert "No issues found" in out, out[-4000:]
    selected = re.search(r"(\d+) selected / (\d+) total", out)
    assert selected is not None
    assert selected.group(1) == selected.group(2), "every operation"


def test_slow_headers_are_cut_off(keyed_server: LiveServer) -> None:
    port = int(keyed_server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n")  # and never the rest
        assert s.recv(1024) == b""  # closed by the server (header timeout of 1 s)


def test_slow_body_gets_408(keyed_server: LiveServer) -> None:
    port = int(keyed_server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(
            b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: 100\r\n\r\n"
            b'{"input": '
        )
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    assert data.startswith(b"HTTP/1.1 408"), data[:200]
    assert b'"code":"request_timeout"' in data


def test_refuses_network_bind_without_keys(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "server": {"host": "0.0.0.0", "port": free_port()},
                "models": [fake_model("fake")],
            }
        )
    )
    env = repo_env()
    env.pop("EMBEDHOST_API_KEYS", None)
    r = subprocess.run(
        serve_command(cfg), capture_output=True, text=True, env=env, cwd=ROOT, timeout=60
    )
    assert r.returncode == 2, r.stdout + r.stderr
    assert "no API keys configured but server.host is 0.0.0.0" in r.stderr
    # The same with keys from the environment starts (and is stopped once ready).
    server = start_server(
        tmp_path,
        {"server": {"host": "0.0.0.0"}, "models": [fake_model("fake")]},
        env={"EMBEDHOST_API_KEYS": f"[{ENTRY.model_dump_json()}]"},
    )
    try:
        ok = httpx.post(f"{server.url}/v1/embeddings", json={"input": "x"}, headers=_auth())
        assert ok.status_code == 200
        assert httpx.post(f"{server.url}/v1/embeddings", json={"input": "x"}).status_code == 401
    finally:
        stop_server(server)


def test_allow_insecure_warns(tmp_path: Path) -> None:
    server = start_server(
        tmp_path,
        {
            "server": {"host": "0.0.0.0"},
            "auth": {"enabled": False, "allow_insecure": True},
            "models": [fake_model("fake")],
        },
    )
    try:
        assert httpx.post(f"{server.url}/v1/embeddings", json={"input": "x"}).status_code == 200
    finally:
        stop_server(server)
    # One log line, at warning level (the console rendering says "[warning  ]").
    assert any(
        "authentication is off" in line and "warning" in line.lower()
        for line in server.log().splitlines()
    )
    assert "reachable from the network" in server.log()


def test_tls(tmp_path: Path) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True, capture_output=True,
    )  # fmt: skip
    port = free_port()
    config: dict[str, Any] = {
        "server": {"port": port, "ssl_certfile": str(cert), "ssl_keyfile": str(key)},
        "models": [fake_model("fake")],
        "auth": {"keys": [ENTRY.model_dump()]},
    }
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    log = tmp_path / "tls.log"
    proc = spawn(serve_command(cfg), log, env=repo_env(), cwd=ROOT)
    url = f"https://127.0.0.1:{port}"
    ctx = ssl.create_default_context(cafile=str(cert))
    try:
        wait_answering(proc, f"{url}/ready", timeout=120, log=log, verify=ctx)
        r = httpx.post(f"{url}/v1/embeddings", json={"input": "x"}, headers=_auth(), verify=ctx)
        assert r.status_code == 200
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
    finally:
        proc.terminate()
        proc.wait(30)
    assert f"serving fake@1 on https://127.0.0.1:{port}" in log.read_text()


def test_logs_hold_no_key_and_no_input(keyed_server: LiveServer) -> None:
    """Last in the module: the debug-level log of everything the server did above."""
    httpx.post(
        f"{keyed_server.url}/v1/embeddings?api_key={KEY}", json={"input": SECRET_TEXT}, timeout=10
    )
    httpx.post(
        f"{keyed_server.url}/v1/embeddings", json={"input": [SECRET_TEXT] * 100}, headers=_auth()
    )
    log = keyed_server.log()
    assert "API keys required: 1 active key(s)" in log
    for secret in (KEY, SECRET_TEXT, ENTRY.hash.removeprefix("sha256:")):
        assert secret not in log


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}
