"""deploy/kubernetes rendered as an operator would render it: ``kubectl kustomize`` of an
overlay (production with a fresh secret.env, the example, or a test overlay made here),
on a copy of the tree so that nothing is written into the checkout.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from embedhost.security.keys import new_key_entry
from tests.support import ROOT

K8S = ROOT / "deploy" / "kubernetes"


def kubectl() -> str:
    exe = shutil.which("kubectl")
    assert exe, "kubectl is missing: run scripts/system-deps (its kustomize renders the overlays)"
    return exe


def copy_tree(tmp: Path) -> Path:
    dst = tmp / "kubernetes"
    shutil.copytree(K8S, dst, ignore=shutil.ignore_patterns("secret.env"))
    return dst


def fresh_secret_env(tree: Path) -> dict[str, str]:
    """Write production/secret.env with new keys; returns the keys themselves too."""
    app, app_entry = new_key_entry("app", ["embed"])
    metrics, metrics_entry = new_key_entry("prometheus", ["metrics"])
    entries = json.dumps([app_entry.model_dump(), metrics_entry.model_dump()])
    values = {
        "api-keys": entries,
        "redis-url": "redis://embedhost-redis:6379/0",
        "metrics-key": metrics,
    }
    (tree / "production" / "secret.env").write_text(
        "".join(f"{k}={v}\n" for k, v in values.items())
    )
    return {**values, "app-key": app}


def render(directory: Path) -> list[dict[str, Any]]:
    r = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def overlay(
    tree: Path,
    name: str,
    resources: Sequence[str],
    components: Sequence[str] = (),
    extra: dict[str, Any] | None = None,
) -> Path:
    """A kustomization under ``tree``/name (paths relative to it)."""
    d = tree / name
    d.mkdir()
    kust = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": list(resources),
        **({"components": list(components)} if components else {}),
        **(extra or {}),
    }
    (d / "kustomization.yaml").write_text(yaml.safe_dump(kust, sort_keys=False))
    return d


def by_kind(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    for d in docs:
        if d["kind"] == kind and (name is None or d["metadata"]["name"] == name):
            return d
    raise AssertionError(f"no {kind} {name or ''} in the rendered manifests")
