"""The Kubernetes Deployment played by ``podman kube play`` (podman 4.3.1 here).

The kustomize base is rendered with a test overlay (the image that scripts/image built,
one replica, the host's network with a free port, a generated Secret name), and the
Deployment is played with its ConfigMap. The keys travel as a podman secret under the
Secret's generated name: podman 4.3.1 cannot feed a played Secret to env vars, but it
resolves a ``secretKeyRef`` against a podman secret holding the same data (a JSON map of
base64 values). Redis is a real redis-server on the host.

From outside the pod: /ready is polled (kube play ignores readiness and startup probes),
an embedding is made with the secret's key, the process runs as the manifest's
securityContext says (uid, read-only root, no capabilities, no privilege escalation), and
``podman pod stop -t <terminationGracePeriodSeconds>`` drains it (exit 0) before
``kube down``. What kube play does not exercise (probes, Service, HPA, PDB,
NetworkPolicy, seccomp, fsGroup, runAsNonRoot) stays with kubernetes-validate
(test_deploy_manifests.py, test_deploy_overlays.py); the README's Deploy section says so.
"""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.kube import by_kind, copy_tree, fresh_secret_env, overlay, render
from tests.support.podman import built_image, podman
from tests.support.redis_server import start_redis
from tests.support.servers import free_port
from tests.support.wait import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


def _play_docs(
    tmp: Path, tag: str, port: int, redis_url: str
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    tree = copy_tree(tmp)
    keys = fresh_secret_env(tree)
    keys["redis-url"] = redis_url
    (tree / "production" / "secret.env").write_text(
        "".join(f"{k}={v}\n" for k, v in keys.items() if k != "app-key")
    )
    name, _, version = tag.rpartition(":")
    patch = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "embedhost"},
        "spec": {
            "replicas": 1,
            "template": {
                "spec": {
                    "hostNetwork": True,
                    "containers": [
                        {
                            "name": "embedhost",
                            "env": [{"name": "EMBEDHOST_SERVER__PORT", "value": str(port)}],
                        }
                    ],
                }
            },
        },
    }
    d = overlay(
        tree,
        "kubeplay",
        ["../production"],
        extra={
            "images": [{"name": "embedhost", "newName": name, "newTag": version}],
            "patches": [{"patch": yaml.safe_dump(patch)}],
        },
    )
    return render(d), keys


def test_kube_play_deployment(tmp_path: Path) -> None:
    tag = built_image()
    redis = start_redis(tmp_path)
    port = free_port()
    docs, keys = _play_docs(tmp_path, tag, port, redis.url)
    dep = by_kind(docs, "Deployment", "embedhost")
    cm = by_kind(docs, "ConfigMap")
    secret = by_kind(docs, "Secret")
    spec = dep["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    grace = spec["terminationGracePeriodSeconds"]
    # Namespaced names would collide across runs: the pod gets a unique name.
    run = uuid.uuid4().hex[:8]
    dep["metadata"]["name"] = f"embedhost-{run}"
    for d in (dep, cm):
        d["metadata"].pop("namespace", None)
    # The host's network (no CNI bridge here) takes no port mappings: the server listens on
    # EMBEDHOST_SERVER__PORT directly.
    assert c["ports"][0]["containerPort"] == 8008
    c.pop("ports")
    play = tmp_path / "play.yaml"
    play.write_text(yaml.safe_dump_all([cm, dep], sort_keys=False))
    # The Secret's data as a podman secret, under the name the Deployment refers to.
    podman_secret = tmp_path / "secret.json"
    podman_secret.write_text(json.dumps(secret["data"]))
    sname = secret["metadata"]["name"]
    podman("secret", "rm", sname, check=False)
    podman("secret", "create", sname, str(podman_secret))
    pod = f"embedhost-{run}-pod-0"
    ctr = f"{pod}-embedhost"
    url = f"http://127.0.0.1:{port}"
    try:
        podman("kube", "play", str(play), timeout=600)

        def ready() -> bool:
            state = podman("inspect", ctr, "--format", "{{.State.Status}}").stdout.strip()
            if state != "running":
                raise AssertionError(f"{ctr} {state}:\n{podman('logs', ctr).stderr[-4000:]}")
            try:
                return httpx.get(f"{url}/ready", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, "the played pod to be ready", timeout=900, every=1)
        auth = {"Authorization": f"Bearer {keys['app-key']}"}
        assert (
            httpx.post(f"{url}/v1/embeddings", json={"input": "x"}, timeout=30).status_code == 401
        )
        r = httpx.post(f"{url}/v1/embeddings", json={"input": "played"}, headers=auth, timeout=120)
        assert r.status_code == 200, r.text
        assert len(r.json()["data"][0]["embedding"]) == 384
        # The metrics key from the same secret reads /metrics.
        m = httpx.get(
            f"{url}/metrics", headers={"Authorization": f"Bearer {keys['metrics-key']}"}, timeout=30
        )
        assert m.status_code == 200 and "embedhost_ready" in m.text
        # The securityContext, as the process sees it.
        sc = c["securityContext"]
        uid = spec["securityContext"]["runAsUser"]
        assert podman("exec", ctr, "id", "-u").stdout.strip() == str(uid)
        status = podman("exec", ctr, "cat", "/proc/1/status").stdout
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        assert sc["capabilities"]["drop"] == ["ALL"] and int(fields["CapEff"], 16) == 0
        assert sc["allowPrivilegeEscalation"] is False and fields["NoNewPrivs"].strip() == "1"
        assert sc["readOnlyRootFilesystem"] is True
        ro = podman("exec", ctr, "touch", "/opt/embedhost/x", check=False)
        assert ro.returncode != 0 and "Read-only file system" in ro.stderr
        assert podman("exec", ctr, "touch", "/tmp/x").returncode == 0  # the emptyDir
        # The config came from the ConfigMap, the keys from the secret.
        env = podman("exec", ctr, "printenv", "EMBEDHOST_API_KEYS").stdout.strip()
        assert json.loads(env) == json.loads(base64.b64decode(secret["data"]["api-keys"]))
        # Stop as the kubelet would: SIGTERM, then the grace period; a clean drain is exit 0.
        podman("pod", "stop", "-t", str(grace), pod, timeout=grace + 60)
        state = json.loads(podman("inspect", ctr, "--format", "{{json .State}}").stdout)
        assert state["ExitCode"] == 0, state
        logs = podman("logs", ctr)
        assert "shutdown requested" in logs.stdout + logs.stderr
    finally:
        podman("kube", "down", str(play), check=False, timeout=120)
        podman("secret", "rm", sname, check=False)
        redis.kill()
