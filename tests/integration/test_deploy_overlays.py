"""deploy/kubernetes rendered with kustomize (kubectl's): the production overlay (its
Secret generated from an untracked secret.env), the example overlay (the repo's published
keys, refused in production), and the components (keda, gpu, models, ingress). Every core
resource of each rendering validates with kubernetes-validate; the models component's init
container script runs here against a local HTTP server. The base, field by field:
test_deploy_manifests.py; the pod played by podman: test_kube_play.py.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from tests.support.deploy import check_config
from tests.support.kube import by_kind, copy_tree, fresh_secret_env, kubectl, overlay, render

KUBERNETES_VERSION = "1.33.0"
CORE = ("v1", "apps/v1", "autoscaling/v2", "policy/v1", "networking.k8s.io/v1")


def _validate(docs: list[dict[str, Any]]) -> None:
    for d in docs:
        if d["apiVersion"] in CORE:
            kubernetes_validate.validate(d, KUBERNETES_VERSION, strict=True)


def _secret(docs: list[dict[str, Any]]) -> dict[str, str]:
    data = by_kind(docs, "Secret")["data"]
    return {k: base64.b64decode(v).decode() for k, v in data.items()}


def test_production_overlay(tmp_path: Path) -> None:
    tree = copy_tree(tmp_path)
    keys = fresh_secret_env(tree)
    docs = render(tree / "production")
    _validate(docs)
    secret = by_kind(docs, "Secret")
    cm = by_kind(docs, "ConfigMap")
    # Generated names carry a content hash: an edit rolls the Deployment.
    assert secret["metadata"]["name"].startswith("embedhost-")
    assert cm["metadata"]["name"].startswith("embedhost-config-")
    dep = by_kind(docs, "Deployment", "embedhost")
    spec = dep["spec"]["template"]["spec"]
    refs = {
        e["valueFrom"]["secretKeyRef"]["name"]
        for e in spec["containers"][0]["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert refs == {secret["metadata"]["name"]}
    assert {v["configMap"]["name"] for v in spec["volumes"] if "configMap" in v} == {
        cm["metadata"]["name"]
    }
    (ep,) = by_kind(docs, "ServiceMonitor")["spec"]["endpoints"]
    assert ep["authorization"]["credentials"]["name"] == secret["metadata"]["name"]
    assert _secret(docs) == {k: v for k, v in keys.items() if k != "app-key"}
    assert "replicas" not in dep["spec"]
    assert by_kind(docs, "HorizontalPodAutoscaler")["spec"]["minReplicas"] >= 2


def test_production_without_secret_env_fails_clearly(tmp_path: Path) -> None:
    tree = copy_tree(tmp_path)
    r = subprocess.run(
        [kubectl(), "kustomize", str(tree / "production")], capture_output=True, text=True
    )
    assert r.returncode != 0 and "secret.env" in r.stderr


def test_example_overlay_is_refused_in_production(tmp_path: Path) -> None:
    docs = render(copy_tree(tmp_path) / "example")
    _validate(docs)
    secret = _secret(docs)
    env = {"EMBEDHOST_API_KEYS": secret["api-keys"]}
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDHOST_")}
    config = tmp_path / "config.yaml"
    config.write_text(by_kind(docs, "ConfigMap")["data"]["config.yaml"])
    r = subprocess.run(
        [sys.executable, "-m", "embedhost", "check-config", str(config)],
        env={**clean, **env, "EMBEDHOST_RATE_LIMITS__REDIS_URL": secret["redis-url"]},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "serve will refuse" in r.stderr and "published" in r.stderr, r.stderr


@pytest.mark.parametrize("component", ["keda", "gpu", "models", "ingress"])
def test_component_renders(tmp_path: Path, component: str) -> None:
    tree = copy_tree(tmp_path)
    base = render(tree / "example")
    docs = render(overlay(tree, "t", ["../example"], [f"../{component}"]))
    _validate(docs)
    dep = by_kind(docs, "Deployment", "embedhost")
    spec = dep["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    if component == "keda":
        assert not [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
        assert by_kind(docs, "ScaledObject")["spec"]["scaleTargetRef"]["name"] == "embedhost"
    elif component == "gpu":
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert spec["runtimeClassName"] == "nvidia"
        assert spec["tolerations"][0]["key"] == "nvidia.com/gpu"
        assert c["image"].startswith("embedhost-cuda:")
        assert "device: cuda" in by_kind(docs, "ConfigMap")["data"]["config.yaml"]
    elif component == "models":
        (init,) = spec["initContainers"]
        assert init["securityContext"]["readOnlyRootFilesystem"] is True
        claim = next(v for v in spec["volumes"] if v["name"] == "models")
        assert (
            claim["persistentVolumeClaim"]["claimName"]
            == by_kind(docs, "PersistentVolumeClaim")["metadata"]["name"]
        )
        assert {"name": "models", "mountPath": "/models", "readOnly": True} in c["volumeMounts"]
        # The fetched model's config names the file the init container writes.
        env = {e["name"]: e["value"] for e in init["env"]}
        assert env["MODEL_FILE"] in by_kind(docs, "ConfigMap")["data"]["config.yaml"]
    else:
        ing = by_kind(docs, "Ingress")
        backend = ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
        assert backend["name"] == by_kind(base, "Service", "embedhost")["metadata"]["name"]
        # The base's NetworkPolicy admits the ingress-nginx namespace.
        np = by_kind(docs, "NetworkPolicy", "embedhost")
        sources = [f.get("namespaceSelector", {}) for f in np["spec"]["ingress"][0]["from"]]
        assert {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}} in sources


@contextlib.contextmanager
def _file_server(root: Path) -> Iterator[str]:
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(root))  # noqa: E731
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def test_fetch_model_init_container(tmp_path: Path) -> None:
    """The models component's init script: fetches, verifies, refuses a wrong checksum."""
    tree = copy_tree(tmp_path)
    docs = render(overlay(tree, "t", ["../example"], ["../models"]))
    (init,) = by_kind(docs, "Deployment")["spec"]["template"]["spec"]["initContainers"]
    assert init["command"] == ["python", "-c"]
    script = init["args"][0]
    served = tmp_path / "served"
    served.mkdir()
    blob = os.urandom(3 << 20)
    (served / "m.gguf").write_bytes(blob)
    models = tmp_path / "models"
    models.mkdir()
    with _file_server(served) as url:

        def run(sha: str) -> subprocess.CompletedProcess[str]:
            env = {
                "MODEL_URL": f"{url}/m.gguf",
                "MODEL_SHA256": sha,
                "MODEL_FILE": str(models / "m.gguf"),
                "PATH": os.environ["PATH"],
            }
            return subprocess.run(
                [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
            )

        bad = run("0" * 64)
        assert bad.returncode != 0 and "expected" in bad.stderr
        assert list(models.iterdir()) == []  # nothing left under the model's name
        good = run(hashlib.sha256(blob).hexdigest())
        assert good.returncode == 0, good.stderr
        assert "fetched" in good.stdout and (models / "m.gguf").read_bytes() == blob
        again = run(hashlib.sha256(blob).hexdigest())
        assert "present" in again.stdout


def test_check_config_on_the_component_configs(tmp_path: Path) -> None:
    """gpu/config.yaml and models/config.yaml are valid settings (paths not checked here)."""
    from embedhost.config import load_settings

    tree = copy_tree(tmp_path)
    for component in ("gpu", "models"):
        load_settings(tree / component / "config.yaml", {}, check_paths=False)
    keys = fresh_secret_env(tree)
    env = {
        "EMBEDHOST_API_KEYS": keys["api-keys"],
        "EMBEDHOST_RATE_LIMITS__REDIS_URL": keys["redis-url"],
    }
    check_config(tree / "gpu" / "config.yaml", env)
    assert json.loads(keys["api-keys"])
