"""The CPU image, built and run for real with podman (scripts/image; tests/support/podman.py),
checked from outside the container:

* /ready, and an embedding equal to this host's (sentence-transformers on the same
  packaged weights, cosine >= 0.9999, both float32);
* a GGUF model mounted into the container serving (llama.cpp links libgomp, which the image
  must carry), close to the host's vector;
* the CPU budget splits the container's quota (``--cpus 1``), not the host's cores;
* the process runs as uid 10001, with a read-only root filesystem where only /tmp is
  writable (``--read-only --read-only-tmpfs=false --tmpfs /tmp``), no capabilities;
* JSON log lines on the container's output (nothing else but llama.cpp's native loader
  warnings); ``podman healthcheck run`` (the image's HEALTHCHECK, kept by
  ``--format docker``) passes;
* ``podman stop -t GRACE``: SIGTERM drains and the container exits 0 (not killed).

Cost: the first build compiles llama.cpp and installs torch (tens of minutes on two busy
cores: the README's Deploy section has the figures); later runs reuse the layers and the
container starts in about a minute.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from embedhost.security.keys import new_key_entry
from tests.engines.gguf_build import minilm_gguf
from tests.support import MINILM
from tests.support.podman import built_image, podman
from tests.support.servers import free_port
from tests.support.wait import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

GRACE_S = 40
TEXTS = ["a container image, built and run", "llama.cpp links libgomp"]


@pytest.fixture(scope="module")
def container(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    tag = built_image()
    tmp = tmp_path_factory.mktemp("image")
    gguf = minilm_gguf("f16")
    port = free_port()
    config = {
        "environment": "production",
        "server": {"host": "0.0.0.0", "port": port, "log_format": "json"},
        "models": [
            {"name": "minilm", "path": MINILM, "version": "1", "dtype": "float32"},
            {
                "name": "minilm-gguf",
                "engine": "llama_cpp",
                "path": f"/models/{gguf.name}",
                "version": "1",
            },
        ],
    }
    (tmp / "config.yaml").write_text(yaml.safe_dump(config))
    key, entry = new_key_entry("app", ["embed", "metrics"])
    name = f"eh-image-{uuid.uuid4().hex[:8]}"
    podman(
        "run", "-d", "--name", name,
        "--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp:rw,size=512m,mode=1777",
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        # A CPU quota under the host's cores: the budget must split 1 CPU, not the host's.
        "--cpus", "1",
        "-e", f"EMBEDHOST_API_KEYS={json.dumps([entry.model_dump()])}",
        "-e", f"EMBEDHOST_SERVER__PORT={port}",
        "-v", f"{gguf.parent}:/models:ro",
        "-v", f"{tmp / 'config.yaml'}:/etc/embedhost/config.yaml:ro",
        tag, "--config", "/etc/embedhost/config.yaml",
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        state = podman("inspect", name, "--format", "{{.State.Status}}").stdout.strip()
        if state != "running":
            raise AssertionError(f"container {state}:\n{podman('logs', name).stderr[-4000:]}")
        try:
            return httpx.get(f"{url}/ready", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(ready, "the container to be ready", timeout=900, every=1)
        yield {"name": name, "url": url, "key": key}
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)


def _embed(c: dict[str, str], model: str) -> np.ndarray:
    r = httpx.post(
        f"{c['url']}/v1/embeddings",
        json={"input": TEXTS, "model": model},
        headers={"Authorization": f"Bearer {c['key']}"},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    return np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float64)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_embeddings_equal_the_hosts(container: dict[str, str], minilm_dir: Path) -> None:
    from sentence_transformers import SentenceTransformer

    host = SentenceTransformer(str(minilm_dir), device="cpu").encode(TEXTS)
    inside = _embed(container, "minilm")
    assert _cos(inside, host).min() >= 0.9999
    # The GGUF model from the mounted volume serves (llama.cpp + libgomp in the image).
    gguf = _embed(container, "minilm-gguf")
    assert _cos(gguf, host).min() >= 0.999


def test_user_readonly_root_and_health(container: dict[str, str]) -> None:
    name = container["name"]
    assert podman("exec", name, "id", "-u").stdout.strip() == "10001"
    assert podman("exec", name, "touch", "/tmp/ok").returncode == 0
    for path in ("/opt/embedhost/x", "/etc/x", "/var/tmp/x", "/x"):
        r = podman("exec", name, "touch", path, check=False)
        assert r.returncode != 0 and "Read-only file system" in r.stderr, (path, r.stderr)
    caps = podman("exec", name, "grep", "CapEff", "/proc/1/status").stdout.split()[-1]
    assert int(caps, 16) == 0
    # The image's HEALTHCHECK (kept by --format docker), run by podman.
    health = podman("inspect", name, "--format", "{{json .Config.Healthcheck}}").stdout
    assert "/health" in health, health
    assert podman("healthcheck", "run", name).returncode == 0


def test_json_logs_then_a_clean_stop(container: dict[str, str]) -> None:
    name = container["name"]
    _embed(container, "minilm")
    # The container's output, as a log collector reads it: the server's log is on stdout
    # (the image sets server.log_stream), every line one JSON record, from the API process
    # and the engine workers alike.
    logs = podman("logs", name)  # podman keeps the two streams apart
    lines = [x for x in (logs.stdout + logs.stderr).splitlines() if x.strip()]
    records = [json.loads(x) for x in logs.stdout.splitlines() if x.startswith("{")]
    assert records and all(r.get("event") and r.get("level") for r in records), lines[:5]
    assert not [x for x in logs.stderr.splitlines() if x.startswith("{")], "a log line on stderr"
    # Except llama.cpp's own loader warnings, printed by the native library past Python's
    # logging ("load: special_eos_id is not in special_eog_ids ..."): left as they are.
    native = ("load:", "llama_", "print_info:", "load_tensors:", "llm_load")
    other = [x for x in lines if not x.startswith("{") and not x.startswith(native)]
    assert not other, other[:5]
    # The CPU budget read the container's quota (--cpus 1), not the host's cores.
    budget = [r for r in records if "CPU budget of" in json.dumps(r)]
    assert budget and "CPU budget of 1 usable cores" in json.dumps(budget[0]), budget
    r = podman("stop", "-t", str(GRACE_S), name, timeout=GRACE_S + 60)
    assert r.returncode == 0
    state = json.loads(podman("inspect", name, "--format", "{{json .State}}").stdout)
    # Exit 0: drained on SIGTERM within the grace period (a SIGKILL would give 137).
    assert state["ExitCode"] == 0 and not state.get("OOMKilled"), state
