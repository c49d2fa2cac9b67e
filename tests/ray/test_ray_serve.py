"""embedhost on Ray Serve, for real: a local Ray cluster started by this module (one head
node, 2 CPUs, no dashboard), the application deployed with ``serve run`` from the repo's
``deploy/ray/serve.yaml``, the real MiniLM model in every replica, Redis for rate limits.

In order (one cluster and one application for the module; about 3 minutes here):
parity through the OpenAI SDK; autoscaling 1 -> 2 -> 1 under load with no failed request
(and the rate limit shared through Redis while two replicas serve); SIGKILL of a replica's
engine worker (embedhost's own recovery inside the replica); SIGKILL of a whole replica
actor (Ray replaces it); overload beyond ``max_queued_requests``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import pytest
import yaml

import ray  # embedhost[ray]
from embedhost.security.keys import hash_key
from ray import serve
from tests.support import MINILM, ROOT, prom
from tests.support.redis_server import RedisServer, start_redis
from tests.support.servers import free_port
from tests.support.wait import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.timeout(900)]


LOAD_KEY = "eh_ray_load_key_0123456789"
LIMITED_KEY = "eh_ray_limited_key_0123456789"
REQUESTS = "embedhost_requests_total"
LIMITED_RPM = 6
APP = "embedhost"
MODEL = "all-MiniLM-L6-v2"
PASSAGES = [
    "Ray Serve routes each request to one of the replicas and scales their number with load. "
    f"Passage {i} adds a few more words so that a batch takes the engine a little while."
    for i in range(16)
]
TEXTS = [
    "How do I reset my password?",
    "Embeddings map text to vectors that capture meaning.",
    "The cat sat on the mat.",
]


@dataclass
class RayApp:
    url: str
    metrics_port: int
    redis: RedisServer
    log_dir: Path

    def headers(self, key: str = LOAD_KEY) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    def running(self) -> tuple[int, int]:
        """(RUNNING replicas, replicas in any state) of the deployment, from Serve's status."""
        states = serve.status().applications[APP].deployments["embedhost"].replica_states
        return states.get("RUNNING", 0), sum(states.values())

    def info(self) -> dict[str, Any]:
        r = httpx.get(f"{self.url}/info", headers=self.headers(), timeout=30)
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]


def _ray_bin() -> str:
    return str(Path(sys.executable).parent / "ray")


def _serve_bin() -> str:
    return str(Path(sys.executable).parent / "serve")


def _config(redis: RedisServer, metrics_port: int) -> dict[str, Any]:
    return {
        "worker": {"restart_backoff_initial_s": 0.1, "restart_backoff_max_s": 0.5},
        # One engine thread per replica: two replicas share this machine's two cores.
        # The cache off: the loads below must reach the engines, not the cache (they send
        # the same passages again and again). float32: what the reference computes.
        "models": [
            {"name": MODEL, "path": MINILM, "threads": 1, "cache": False, "dtype": "float32"}
        ],
        "auth": {
            "metrics_open": True,
            "keys": [
                {"id": "load", "hash": hash_key(LOAD_KEY), "scopes": ["embed", "admin"]},
                {
                    "id": "limited",
                    "hash": hash_key(LIMITED_KEY),
                    "rate_limits": {"requests_per_minute": LIMITED_RPM},
                },
            ],
        },
        "rate_limits": {"storage": "redis", "redis_url": redis.url},
        # Small and fast for a test on 2 cores: the README gives (and sizes) the defaults.
        "ray": {
            "min_replicas": 1,
            "max_replicas": 2,
            "target_ongoing_requests": 2,
            "upscale_delay_s": 1,
            "downscale_delay_s": 4,
            "metrics_interval_s": 0.5,
            "look_back_period_s": 2,
            "max_ongoing_requests": 4,
            "max_queued_requests": 8,
            "num_cpus": 0.5,
            "health_check_period_s": 2,
            "health_check_timeout_s": 20,
            "metrics_port": metrics_port,
        },
    }


@pytest.fixture(scope="module")
def ray_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayApp]:
    tmp = tmp_path_factory.mktemp("ray")
    redis = start_redis(tmp)
    metrics_port = free_port()
    config = tmp / "embedhost.yaml"
    config.write_text(yaml.safe_dump(_config(redis, metrics_port)))
    # Ray's socket paths must stay short: its own directory under /tmp.
    ray_tmp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    env = {
        **os.environ,
        "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "embedhost.rayserve:proxy_middlewares",
        "EMBEDHOST_CONFIG": str(config),
        "RAY_USAGE_STATS_ENABLED": "0",
        # RAY_AUTH_MODE and RAY_AUTH_TOKEN come from tests/ray/conftest.py, through os.environ.
        "PYTHONPATH": os.pathsep.join(
            [str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]
        ),
    }
    gcs = free_port()
    head_log = tmp / "ray-head.log"
    ports = {
        "--port": gcs,
        "--ray-client-server-port": free_port(),
        "--node-manager-port": free_port(),
        "--object-manager-port": free_port(),
        "--metrics-export-port": free_port(),
        "--dashboard-agent-listen-port": free_port(),
        "--dashboard-agent-grpc-port": free_port(),
        "--runtime-env-agent-port": free_port(),
    }
    with head_log.open("wb") as out:
        head = subprocess.Popen(
            [
                _ray_bin(), "start", "--head", "--block", "--num-cpus=2",
                "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={ray_tmp}",
                *[f"{k}={v}" for k, v in ports.items()],
            ],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    address = f"127.0.0.1:{gcs}"
    http_port = free_port()
    try:

        def head_started() -> bool:
            assert head.poll() is None, head_log.read_text(errors="replace")
            return b"Ray runtime started" in head_log.read_bytes()

        wait_until(head_started, "the ray head to start", timeout=120, every=0.2)
        ray.init(address=address, log_to_driver=False, configure_logging=False)
        serve.start(http_options={"host": "127.0.0.1", "port": http_port})
        # The operator's path: `serve run` on the repo's Serve config, settings from the
        # embedhost YAML named by EMBEDHOST_CONFIG.
        t0 = time.monotonic()
        subprocess.run(
            [_serve_bin(), "run", "--non-blocking", f"--address={address}",
             str(ROOT / "deploy" / "ray" / "serve.yaml")],
            env=env, check=True, timeout=300, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        app = RayApp(f"http://127.0.0.1:{http_port}", metrics_port, redis, ray_tmp)
        wait_until(
            lambda: httpx.get(f"{app.url}/ready", timeout=5).status_code == 200,
            "the Serve application to become ready",
            timeout=240,
            every=0.5,
            ignore=(httpx.HTTPError,),
        )
        print(f"\ncluster + deploy ready in {time.monotonic() - t0:.1f}s after the head")
        yield app
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        with contextlib.suppress(Exception):
            ray.shutdown()
        _stop_group(head)
        redis.kill()


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """`ray start --block` stops the processes it started when it gets SIGTERM; anything
    left in its session (workers, their engine workers) gets SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


@dataclass
class Load:
    """Client threads posting embedding requests until stopped; every answer recorded."""

    url: str
    threads: int
    texts: list[str] = field(default_factory=lambda: PASSAGES)
    results: list[tuple[float, int, dict[str, Any]]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def _run(self, stop: threading.Event) -> None:
        with httpx.Client(timeout=120, headers={"Authorization": f"Bearer {LOAD_KEY}"}) as c:
            while not stop.is_set() and not self.stop.is_set():
                r = c.post(f"{self.url}/v1/embeddings", json={"model": MODEL, "input": self.texts})
                self.results.append((time.monotonic(), r.status_code, _answer(r)))

    def start(self) -> Load:
        for _ in range(self.threads):
            self.add()
        return self

    def add(self) -> threading.Event:
        own = threading.Event()
        t = threading.Thread(target=self._run, args=(own,), daemon=True)
        t.start()
        self._workers.append(t)
        return own

    def finish(self) -> None:
        self.stop.set()
        for t in self._workers:
            t.join(180)
            assert not t.is_alive(), "a client request hung"

    def statuses(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for _, status, _ in self.results:
            out[status] = out.get(status, 0) + 1
        return out


def _answer(r: httpx.Response) -> dict[str, Any]:
    info: dict[str, Any] = {"retry_after": r.headers.get("retry-after")}
    if r.status_code != 200:
        info["content_type"] = r.headers.get("content-type")
        try:
            info["error"] = r.json()["error"]
        except Exception:
            info["error"] = {"raw": r.text[:300]}
    return info


def _assert_retryable(results: list[tuple[float, int, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Every refusal is 429/503 with Retry-After and embedhost's OpenAI error body."""
    refused = [a for _, s, a in results if s != 200]
    for _, status, a in results:
        if status == 200:
            continue
        assert status in (429, 503), (status, a)
        assert a["retry_after"] and int(a["retry_after"]) >= 1, a
        assert set(a["error"]) == {"message", "type", "param", "code"}, a
    return refused


def _wait_for(cond: Any, timeout: float, what: str, every: float = 0.5) -> None:
    wait_until(cond, what, timeout=timeout, every=every)


def test_openai_sdk_matches_sentence_transformers(ray_app: RayApp, minilm_dir: Path) -> None:
    from openai import OpenAI
    from sentence_transformers import SentenceTransformer

    ref = SentenceTransformer(str(minilm_dir), device="cpu").encode(
        TEXTS, normalize_embeddings=True
    )
    client = OpenAI(base_url=f"{ray_app.url}/v1", api_key=LOAD_KEY, max_retries=0)
    res = client.embeddings.create(model=MODEL, input=TEXTS)
    got = np.array([d.embedding for d in res.data])
    assert got.shape == (3, 384)
    cos = (got * ref).sum(axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.999, cos
    # Embedhost's own errors come through Ray unchanged; keys are embedhost's.
    import openai

    with pytest.raises(openai.NotFoundError) as info:
        client.embeddings.create(model="gpt-nope", input="x")
    assert info.value.body["code"] == "model_not_found"  # type: ignore[index]
    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=f"{ray_app.url}/v1", api_key="eh_wrong", max_retries=0).embeddings.create(
            model=MODEL, input="x"
        )
    # The admin API says plainly that a model change is a redeploy here.
    r = httpx.post(
        f"{ray_app.url}/admin/models/{MODEL}/rollback", headers=ray_app.headers(), json={}
    )
    assert r.status_code == 409, r.text
    assert "Ray Serve rolls every replica" in r.json()["error"]["message"]
    assert httpx.get(f"{ray_app.url}/admin/models", headers=ray_app.headers()).status_code == 200


def _replica_metrics(ray_app: RayApp) -> dict[int, str]:
    """Each replica's own /metrics (ray.metrics_port and up), by port."""
    out: dict[int, str] = {}
    for port in range(ray_app.metrics_port, ray_app.metrics_port + 4):
        with contextlib.suppress(httpx.HTTPError):
            r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
            if r.status_code == 200 and "embedhost_requests_total" in r.text:
                out[port] = r.text
    return out


def _shared_refusal(ray_app: RayApp) -> dict[int, tuple[int, ...]] | None:
    """Each replica's (200s, 429s) for the limited key, once some replica refused it
    before serving the key's whole budget itself: only a budget shared across replicas
    does that (a replica counting alone serves LIMITED_RPM before its first 429)."""
    counts = {
        p: tuple(int(prom.total(t, REQUESTS, key_id="limited", status=c)) for c in ("200", "429"))
        for p, t in _replica_metrics(ray_app).items()
    }
    if any(ok < LIMITED_RPM and refused > 0 for ok, refused in counts.values()):
        return counts
    return None


def test_autoscaling_up_and_down_without_failures(ray_app: RayApp) -> None:
    timeline: list[tuple[float, int, int]] = []
    t0 = time.monotonic()

    def poll() -> tuple[int, int]:
        running, total = ray_app.running()
        if not timeline or timeline[-1][1:] != (running, total):
            timeline.append((round(time.monotonic() - t0, 1), running, total))
            print(f"t={timeline[-1][0]:6.1f}s replicas running={running} total={total}")
        return running, total

    assert poll() == (1, 1)
    load = Load(ray_app.url, threads=6).start()
    try:
        _wait_for(lambda: poll()[0] == 2, 180, "a second replica under load")
        # Two replicas serve: one key's limit holds across them (Redis), and each replica's
        # metrics are reachable on its own port.
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            answers = list(
                pool.map(
                    lambda _: httpx.post(
                        f"{ray_app.url}/v1/embeddings",
                        headers=ray_app.headers(LIMITED_KEY),
                        json={"model": MODEL, "input": "shared limit"},
                        timeout=60,
                    ),
                    range(2 * LIMITED_RPM),
                )
            )
        codes = sorted(a.status_code for a in answers)
        assert codes == [200] * LIMITED_RPM + [429] * LIMITED_RPM, codes
        assert all(a.headers.get("retry-after") for a in answers if a.status_code == 429)

        # Until the router has sent the key to both replicas: the second refuses it at once.
        def shared() -> dict[int, tuple[int, ...]] | None:
            if (found := _shared_refusal(ray_app)) is None:
                r = httpx.post(
                    f"{ray_app.url}/v1/embeddings",
                    headers=ray_app.headers(LIMITED_KEY),
                    json={"model": MODEL, "input": "shared limit"},
                    timeout=60,
                )
                assert r.status_code == 429, r.text
            return found

        per_replica = wait_until(shared, "a replica refusing the key's spent budget", timeout=30)
        print(f"limited key's (200s, 429s) per replica (metrics port -> counts): {per_replica}")
        assert len(per_replica) == 2, per_replica
        assert sum(ok for ok, _ in per_replica.values()) == LIMITED_RPM
        keys = subprocess.run(
            ["redis-cli", "-p", str(ray_app.redis.port), "--scan"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert "embedhost" in keys, keys
        # Light load: below the target, so Serve scales down while requests still flow.
        load.stop.set()
        for t in load._workers:
            t.join(180)
        light = Load(ray_app.url, threads=1, results=load.results).start()
        _wait_for(lambda: poll() == (1, 1), 180, "scale-down to one replica")
        time.sleep(1.0)  # requests keep flowing to the remaining replica
        light.finish()
    finally:
        load.finish()
    print("replica count over time (s, running, total):", timeline)
    statuses = load.statuses()
    print("answers during scale-up and scale-down:", statuses)
    assert statuses == {200: len(load.results)}, statuses
    assert max(r for _, r, _ in timeline) == 2


def test_engine_worker_sigkill_inside_a_replica(ray_app: RayApp) -> None:
    _wait_for(lambda: ray_app.running() == (1, 1), 120, "one replica")
    before = ray_app.info()
    (worker_pid,) = [r["pid"] for m in before["models"] for r in m["replicas"]]
    load = Load(ray_app.url, threads=3).start()
    try:
        _wait_for(lambda: load.statuses().get(200, 0) >= 3, 120, "requests served")
        killed_at = time.monotonic()
        os.kill(worker_pid, signal.SIGKILL)
        _wait_for(
            lambda: (
                any(s == 200 and t > killed_at + 0.5 for t, s, _ in load.results)
                and any(s != 200 for _, s, _ in load.results)
            ),
            120,
            "refusals, then recovery",
        )
    finally:
        load.finish()
    refused = _assert_retryable(load.results)
    print("answers around the worker's SIGKILL:", load.statuses())
    assert refused and all(a["error"]["code"] != "replica_lost" for a in refused)
    after = ray_app.info()
    # Embedhost recovered inside the same replica: Ray did not replace it.
    assert after["instance_id"] == before["instance_id"]
    assert [r["pid"] for m in after["models"] for r in m["replicas"]] != [worker_pid]


def test_replica_actor_sigkill_is_replaced(ray_app: RayApp) -> None:
    _wait_for(lambda: ray_app.running() == (1, 1), 120, "one replica")
    before = ray_app.info()
    (worker_pid,) = [r["pid"] for m in before["models"] for r in m["replicas"]]
    replica_pid = psutil.Process(worker_pid).ppid()
    # The engine worker's parent is the replica actor (Ray titles its process so).
    cmdline = " ".join(psutil.Process(replica_pid).cmdline())
    assert "ServeReplica" in cmdline, (replica_pid, cmdline)
    load = Load(ray_app.url, threads=3).start()
    try:
        _wait_for(lambda: load.statuses().get(200, 0) >= 3, 120, "requests served")
        killed_at = time.monotonic()
        os.kill(replica_pid, signal.SIGKILL)
        _wait_for(
            lambda: (
                ray_app.info()["instance_id"] != before["instance_id"]
                and any(s == 200 and t > killed_at for t, s, _ in load.results[-3:])
            ),
            240,
            "a replacement replica that serves",
            every=1.0,
        )
    finally:
        load.finish()
    refused = _assert_retryable(load.results)
    print(
        "answers around the replica's SIGKILL:",
        load.statuses(),
        sorted({a["error"]["code"] for a in refused}),
    )
    # The orphaned engine worker notices its parent is gone and exits.
    _wait_for(lambda: not psutil.pid_exists(worker_pid), 60, "the old engine worker to exit")


def test_overload_beyond_the_queue_only_429_503(ray_app: RayApp) -> None:
    _wait_for(lambda: ray_app.running()[0] >= 1, 120, "a replica")
    n = 40  # max_ongoing_requests 4 + max_queued_requests 8 per replica: far beyond
    barrier = threading.Barrier(n)

    def one(_: int) -> tuple[float, int, dict[str, Any]]:
        with httpx.Client(timeout=120, headers=ray_app.headers()) as c:
            barrier.wait(60)
            r = c.post(f"{ray_app.url}/v1/embeddings", json={"model": MODEL, "input": PASSAGES * 2})
            return time.monotonic(), r.status_code, _answer(r)

    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        results = list(pool.map(one, range(n)))
    refused = _assert_retryable(results)
    codes = sorted({a["error"]["code"] for a in refused})
    print(f"{n} at once: {len(results) - len(refused)} served, {len(refused)} refused {codes}")
    assert refused, "the burst did not exceed the queue"
    assert "overloaded" in codes  # Ray's own queue-full answer, in embedhost's shape
    assert len(results) - len(refused) >= 1
