"""Hot swap on a real server with real MiniLM workers, under steady concurrent load.

Version 1 is float32, version 2 the same weights in bfloat16 (the cheapest real second
version). Then the loads that must fail cleanly: checksum mismatch, missing path, a
corrupt (truncated) weights file, and one too big for memory (a sparse 1 TiB file).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import pytest

from embedhost.config import DEFAULT_MODEL_SHA256
from tests.support import MINILM
from tests.support.servers import LiveServer, start_server, stop_server
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow

NAME = "all-MiniLM-L6-v2"
TEXTS = [f"sentence number {i} about vector databases and search" for i in range(16)]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("swap")
    srv = start_server(
        tmp,
        {
            "models": [
                {
                    "name": NAME,
                    "path": MINILM,
                    "version": "1",
                    "dtype": "float32",
                    "threads": 1,
                    "checksum": f"sha256:{DEFAULT_MODEL_SHA256}",
                }
            ],
            "worker": {"restart_backoff_initial_s": 0.2},
            # The admin API loads only under its roots (issue 20): the tests' own
            # directories (corrupt, huge, missing models) are under the session's base.
            "lifecycle": {"model_roots": [str(tmp_path_factory.getbasetemp())]},
        },
    )
    yield srv
    stop_server(srv)


def _model(url: str) -> dict[str, Any]:
    r = httpx.get(f"{url}/admin/models/{NAME}", timeout=10)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _until(cond: Callable[[], bool], what: str, timeout: float = 120) -> None:
    """Wait for a condition, with a deadline (never a fixed sleep that decides the outcome)."""
    wait_until(cond, what, timeout=timeout)


def _version(url: str, version: str) -> dict[str, Any]:
    return next(v for v in _model(url)["versions"] if v["version"] == version)


def _embed(url: str, text: str = "hello") -> httpx.Response:
    return httpx.post(f"{url}/v1/embeddings", json={"input": text}, timeout=60)


def test_swap_under_load_zero_failures(server: LiveServer) -> None:
    url = server.url
    old_pid = _model(url)["versions"][0]["replicas"][0]["pid"]
    assert psutil.pid_exists(old_pid)
    results: list[tuple[float, float, int, str, list[float] | None, int]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(n: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as c:
            i = n
            while not stop.is_set():
                i += 1
                text_id = i % len(TEXTS)
                sent = time.monotonic()
                try:
                    r = c.post("/v1/embeddings", json={"input": TEXTS[text_id]})
                    status, tag = r.status_code, r.headers.get("x-embedhost-model", "")
                    vec = r.json()["data"][0]["embedding"] if status == 200 else None
                except httpx.HTTPError as exc:
                    status, tag, vec = -1, repr(exc), None
                with lock:
                    results.append((sent, time.monotonic(), status, tag, vec, text_id))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()

    def answered(cond: Callable[[float, int, str, int], bool]) -> int:
        """How many answers so far satisfy cond(sent, status, tag, text_id)."""
        with lock:
            return sum(1 for sent, _, st, tag, _, tid in results if cond(sent, st, tag, tid))

    try:
        # Load is running: the clients have had answers, text 0 among them.
        _until(lambda: answered(lambda _s, st, _t, tid: st == 200 and tid == 0) >= 2, "load")
        r = httpx.post(
            f"{url}/admin/models/{NAME}/versions",
            json={
                "version": "2",
                "path": MINILM,
                "dtype": "bfloat16",
                "threads": 1,
                "checksum": f"sha256:{DEFAULT_MODEL_SHA256}",
                "wait": True,
            },
            timeout=300,
        )
        assert r.status_code == 201, r.text
        assert r.json()["status"] == "ready"
        # Shadow first: version 2 gets copies, clients still get version 1.
        r = httpx.put(f"{url}/admin/models/{NAME}/shadow", json={"version": "2"}, timeout=10)
        assert r.status_code == 200, r.text
        shadow_on = time.monotonic()
        _until(
            lambda: (
                _version(url, "2")["stats"].get("shadow", {}).get("requests", 0) >= 5
                and answered(lambda sent, *_: sent > shadow_on) >= 5
            ),
            "shadowed requests",
        )
        r = httpx.put(f"{url}/admin/models/{NAME}/shadow", json={"version": None}, timeout=10)
        shadow_off = time.monotonic()
        shadow = next(v for v in _model(url)["versions"] if v["version"] == "2")["stats"]
        r = httpx.post(f"{url}/admin/models/{NAME}/promote", json={"version": "2"}, timeout=60)
        promoted = time.monotonic()
        assert r.status_code == 200, r.text
        _until(
            lambda: answered(lambda sent, _st, _t, tid: sent > promoted and tid == 0) >= 2,
            "answers after the promote",
        )
    finally:
        stop.set()
        for t in threads:
            t.join()

    failed = [(s, tag) for _, _, s, tag, _, _ in results if s != 200]
    assert not failed, failed[:5]
    # While shadowing, answers came from version 1; version 2's agreement was recorded.
    during = {tag for sent, got, _, tag, _, _ in results if sent > shadow_on and got < shadow_off}
    assert during == {f"{NAME}@1"}
    assert shadow["shadow"]["requests"] > 0
    assert shadow["shadow"]["errors"] == 0
    assert shadow["requests"] == 0  # it answered nobody
    agreement = shadow["shadow"]["agreement"]
    assert 0.99 < agreement["mean_cosine"] < 1.0  # bfloat16 vs float32: close, not equal
    assert agreement["min_cosine"] > 0.98
    tags = [tag for *_, tag, _, _ in results]
    assert set(tags) == {f"{NAME}@1", f"{NAME}@2"}
    # Every request sent after the promote answered is served by the new version.
    after = [tag for sent, _, _, tag, _, _ in results if sent > promoted]
    assert after
    assert set(after) == {f"{NAME}@2"}
    assert results[0][3] == f"{NAME}@1"
    # Both versions really embedded: same text, bfloat16 vs float32 vectors agree.
    by = {
        tag: np.array(vec)
        for _, _, _, tag, vec, text_id in results
        if text_id == 0 and vec is not None
    }
    assert set(by) == {f"{NAME}@1", f"{NAME}@2"}
    cos = float(by[f"{NAME}@1"] @ by[f"{NAME}@2"])
    assert 0.99 < cos < 1.0 - 1e-7  # close, and not the same computation

    # The old version drains and its worker process goes away.

    def v1_stopped() -> dict[str, Any] | None:
        v1 = next(v for v in _model(url)["versions"] if v["version"] == "1")
        return v1 if v1["status"] == "stopped" else None

    v1 = wait_until(v1_stopped, "version 1 to stop", timeout=60, every=0.1)
    assert v1["status"] == "stopped"
    _until(lambda: not psutil.pid_exists(old_pid), "the old worker to exit", timeout=10)
    assert not psutil.pid_exists(old_pid)
    model = _model(url)
    assert model["current"] == "2"
    info = httpx.get(f"{url}/info", timeout=10).json()
    entry = next(m for m in info["models"] if m["name"] == NAME)
    assert entry["version"] == "2"
    assert entry["dtype"] == "bfloat16"
    ids = {d["id"]: d["version"] for d in httpx.get(f"{url}/v1/models", timeout=10).json()["data"]}
    assert ids == {NAME: "2"}
    v2 = next(v for v in model["versions"] if v["version"] == "2")
    assert v2["stats"]["errors"] == 0
    # Its counters saw exactly the answers tagged with it.
    assert v2["stats"]["requests"] == tags.count(f"{NAME}@2")
    print(
        f"swap under load: {len(results)} requests, {tags.count(f'{NAME}@1')} by v1, "
        f"{tags.count(f'{NAME}@2')} by v2, 0 failed; shadow agreement {agreement}"
    )


def _copy_config_files(src: Path, dst: Path) -> None:
    dst.mkdir()
    for p in src.iterdir():
        if p.is_file() and not p.name.endswith((".safetensors", ".bin", ".onnx")):
            shutil.copy(p, dst / p.name)
    for sub in ("1_Pooling",):
        if (src / sub).is_dir():
            shutil.copytree(src / sub, dst / sub)


def _load(url: str, version: str, **fields: Any) -> httpx.Response:
    body = {"version": version, "path": MINILM, "dtype": "float32", "wait": True, **fields}
    return httpx.post(f"{url}/admin/models/{NAME}/versions", json=body, timeout=300)


def _still_serving(url: str, current: str) -> None:
    r = _embed(url)
    assert r.status_code == 200
    assert r.headers["x-embedhost-model"] == f"{NAME}@{current}"
    assert httpx.get(f"{url}/ready", timeout=10).status_code == 200


def test_bad_loads_fail_cleanly(server: LiveServer, tmp_path: Path, minilm_dir: Path) -> None:
    url = server.url
    current = _model(url)["current"]

    r = _load(url, "bad-sum", checksum="sha256:" + "ab" * 32)
    assert r.status_code == 422, r.text
    msg = r.json()["error"]["message"]
    assert "model.safetensors" in msg
    assert "expected sha256:" + "ab" * 32 in msg
    assert f"actual sha256:{DEFAULT_MODEL_SHA256}" in msg
    _still_serving(url, current)

    r = _load(url, "missing", path=str(tmp_path / "no-such-model"))
    assert r.status_code == 400
    assert "does not exist" in r.json()["error"]["message"]
    _still_serving(url, current)

    corrupt = tmp_path / "corrupt"
    _copy_config_files(minilm_dir, corrupt)
    weights = (minilm_dir / "model.safetensors").read_bytes()
    (corrupt / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    r = _load(url, "corrupt", path=str(corrupt))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "model_load_failed"
    _still_serving(url, current)

    huge = tmp_path / "huge"
    _copy_config_files(minilm_dir, huge)
    with (huge / "model.safetensors").open("wb") as f:
        f.truncate(1 << 40)  # sparse: 1 TiB apparent size, no disk used
    r = _load(url, "huge", path=str(huge))
    assert r.status_code == 507, r.text
    assert r.json()["error"]["code"] == "insufficient_memory"
    _still_serving(url, current)

    states = {v["version"]: v["status"] for v in _model(url)["versions"]}
    assert states["bad-sum"] == "failed"
    assert states["corrupt"] == "failed"
    assert "huge" not in states  # refused before anything started
    assert "missing" not in states
    assert states[current] == "ready"
    # No worker process is left behind by the failed loads.
    pids = [
        r["pid"]
        for v in _model(url)["versions"]
        if v["status"] == "failed"
        for r in v["replicas"]
        if r["pid"]
    ]
    _until(lambda: not any(psutil.pid_exists(p) for p in pids), "the workers to exit", 10)
    assert not [p for p in pids if psutil.pid_exists(p)]
    assert os.path.getsize(huge / "model.safetensors") == 1 << 40
