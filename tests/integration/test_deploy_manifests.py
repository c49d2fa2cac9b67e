"""deploy/kubernetes and deploy/nginx: the Kubernetes base and its autoscaler, the nginx
config. Every core Kubernetes resource is validated by kubernetes-validate (strict, a
pinned Kubernetes version); for the operators' objects (ServiceMonitor, PrometheusRule,
KEDA's ScaledObject, prometheus-adapter's rule) the fields those operators read are
checked here. Every EMBEDHOST_* variable the Deployment sets goes through
`embedhost check-config`. The Dockerfiles and the compose stack: test_deploy_compose.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.support import ROOT
from tests.support.deploy import (
    DEPLOY,
    check_config,
    exported_names,
    nginx_conf,
    promtool,
)
from tests.support.kube import copy_tree, fresh_secret_env


def dotenv(path: Path) -> dict[str, str]:
    """kustomize's env file: KEY=VALUE lines, # comments."""
    lines = [x for x in path.read_text().splitlines() if x.strip() and not x.startswith("#")]
    return dict(x.split("=", 1) for x in lines)


K8S = DEPLOY / "kubernetes"
BASE = K8S / "base"
PROM = DEPLOY / "prometheus"
KUBERNETES_VERSION = "1.33.0"
CORE_GROUPS = ("v1", "apps/v1", "autoscaling/v2", "policy/v1", "networking.k8s.io/v1")
# Highest API + worker RSS measured with the default model (bench/RESULTS.md: 1857 MB,
# transformers bfloat16 = dtype auto, under the short-text load).
MEASURED_RSS_MB = 1857


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _one(path: Path) -> dict[str, Any]:
    docs = _docs(path)
    assert len(docs) == 1, f"{path.name}: one resource per file"
    return docs[0]


def _base_files() -> list[Path]:
    kust = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    return [BASE / name for name in kust["resources"]]


def _by_kind(kind: str, name: str | None = None) -> dict[str, Any]:
    for f in _base_files():
        for d in _docs(f):
            if d["kind"] == kind and (name is None or d["metadata"]["name"] == name):
                return d
    raise AssertionError(f"no {kind} {name or ''} in the base")


# -- Kubernetes ------------------------------------------------------------------------------


def test_kustomization_lists_every_file() -> None:
    listed = {p.name for p in _base_files()}
    # kustomizeconfig.yaml: kustomize's own; config.yaml: the ConfigMap's generated content.
    own = {"kustomization.yaml", "kustomizeconfig.yaml", "config.yaml"}
    present = {p.name for p in BASE.glob("*.yaml")} - own
    assert listed == present
    kust = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    # No Secret in the base: an overlay generates it (issue 24, item 1).
    assert not any(d["kind"] == "Secret" for f in _base_files() for d in _docs(f))
    assert "secretGenerator" not in kust


@pytest.mark.parametrize("path", _base_files(), ids=lambda p: p.name)
def test_core_resources_validate(path: Path) -> None:
    doc = _one(path)
    if doc["apiVersion"] not in CORE_GROUPS:
        assert doc["apiVersion"] == "monitoring.coreos.com/v1"  # checked field by field below
        return
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_deployment() -> None:
    dep = _by_kind("Deployment", "embedhost")
    spec = dep["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    prod = yaml.safe_load((ROOT / "configs/production.yaml").read_text())
    probes = {
        k: c[k]["httpGet"]["path"] for k in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    # The startup gate holds until the models are ready (/health answers before any load).
    assert probes == {
        "startupProbe": "/ready",
        "livenessProbe": "/health",
        "readinessProbe": "/ready",
    }
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    # The worst case: preStop + the drain + the registry stopping its workers (it waits up
    # to graceful_shutdown_s again for them), under the grace period.
    worst = int(pre_stop[1]) + 2 * prod["server"]["graceful_shutdown_s"]
    assert spec["terminationGracePeriodSeconds"] > worst
    # The autoscaler owns the replica count; the image is set by the overlay.
    assert "replicas" not in dep["spec"]
    assert "imagePullPolicy" not in c
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    tmp = next(m for m in c["volumeMounts"] if m["mountPath"] == "/tmp")
    assert "emptyDir" in next(v for v in spec["volumes"] if v["name"] == tmp["name"])
    keys = {t["topologyKey"] for t in spec["topologySpreadConstraints"]}
    assert "kubernetes.io/hostname" in keys
    mem = c["resources"]["limits"]["memory"]
    assert mem.endswith("Mi") and int(mem[:-2]) >= 1.25 * MEASURED_RSS_MB
    assert c["resources"]["requests"]["memory"] == mem
    assert c["ports"][0]["containerPort"] == prod["server"]["port"]
    env = {e["name"]: e for e in c["env"]}
    assert env["EMBEDHOST_SERVER__INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.name"
    )


def test_deployment_env_passes_check_config(tmp_path: Path) -> None:
    """The Deployment's environment, resolved from a production secret.env with fresh keys,
    with the ConfigMap's config file: check-config passes and says serve would start."""
    dep = _by_kind("Deployment", "embedhost")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    secret = fresh_secret_env(copy_tree(tmp_path))
    env: dict[str, str] = {}
    for e in c["env"]:
        if not e["name"].startswith("EMBEDHOST_"):
            continue
        src = e["valueFrom"]
        if "secretKeyRef" in src:
            assert src["secretKeyRef"]["name"] == "embedhost"
            env[e["name"]] = secret[src["secretKeyRef"]["key"]]
        else:
            env[e["name"]] = "embedhost-5d8c7b9f4-x2k7q"  # a pod name
    check_config(BASE / "config.yaml", env)


def test_configmap_is_production_yaml() -> None:
    prod = yaml.safe_load((ROOT / "configs/production.yaml").read_text())
    assert yaml.safe_load((BASE / "config.yaml").read_text()) == prod, (
        "copy configs/production.yaml to deploy/kubernetes/base/config.yaml"
    )
    # The components' configs: production's, but for the models.
    rest = {k: v for k, v in prod.items() if k != "models"}
    gpu = yaml.safe_load((K8S / "gpu" / "config.yaml").read_text())
    assert gpu.pop("models") == [{**prod["models"][0], "device": "cuda"}]
    models = yaml.safe_load((K8S / "models" / "config.yaml").read_text())
    first, fetched = models.pop("models")
    assert first == prod["models"][0] and fetched["path"].startswith("/models/")
    assert gpu == rest and models == rest


def test_service_pdb_networkpolicy_select_the_pods() -> None:
    labels = _by_kind("Deployment", "embedhost")["spec"]["template"]["metadata"]["labels"]
    svc = _by_kind("Service", "embedhost")
    pdb = _by_kind("PodDisruptionBudget")
    np = _by_kind("NetworkPolicy", "embedhost")
    for sel in (svc["spec"]["selector"], pdb["spec"]["selector"]["matchLabels"]):
        assert sel.items() <= labels.items()
    assert np["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    redis_np = _by_kind("NetworkPolicy", "embedhost-redis")
    assert redis_np["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"].items() <= (
        labels.items()
    )
    # The Secret's Redis URL names the Redis Service.
    url = dotenv(K8S / "production" / "secret.env.example")["redis-url"]
    redis_svc = _by_kind("Service", "embedhost-redis")
    assert (
        url == f"redis://{redis_svc['metadata']['name']}:{redis_svc['spec']['ports'][0]['port']}/0"
    )


def test_servicemonitor_fields() -> None:
    sm = _by_kind("ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    svc = _by_kind("Service", "embedhost")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    (ep,) = sm["spec"]["endpoints"]
    assert ep["port"] in {p["name"] for p in svc["spec"]["ports"]}
    assert ep["path"] == "/metrics"
    assert re.fullmatch(r"\d+s", ep["interval"]) and re.fullmatch(r"\d+s", ep["scrapeTimeout"])
    cred = ep["authorization"]["credentials"]
    assert ep["authorization"]["type"] == "Bearer"
    assert cred["name"] == "embedhost"  # rewritten to the generated name (test_deploy_overlays)
    # The metrics key in the example Secret is admitted by one of its API keys, with the scope.
    import hashlib

    secret = dotenv(K8S / "example" / "example.env")
    entries = json.loads(secret["api-keys"])
    digest = "sha256:" + hashlib.sha256(secret[cred["key"]].encode()).hexdigest()
    assert any(e["hash"] == digest and "metrics" in e["scopes"] for e in entries)
    # The job label the recording rules group by.
    assert sm["spec"]["jobLabel"] in svc["metadata"]["labels"]


def _scaling_rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = yaml.safe_load((PROM / "scaling.yml").read_text())["groups"][0][
        "rules"
    ]
    return rules


def test_prometheusrule_matches_scaling_and_alerts() -> None:
    pr = _by_kind("PrometheusRule")
    assert pr["apiVersion"] == "monitoring.coreos.com/v1"
    groups = [
        g
        for f in ("scaling.yml", "alerts.yml")
        for g in yaml.safe_load((PROM / f).read_text())["groups"]
    ]
    assert pr["spec"]["groups"] == groups
    for g in pr["spec"]["groups"]:
        assert g["name"] and g["rules"]
        for r in g["rules"]:
            assert set(r) <= {"record", "alert", "expr", "for", "labels", "annotations"}


def test_scaling_rules_promtool() -> None:
    assert "SUCCESS" in promtool("check", "rules", "scaling.yml", cwd=PROM)
    promtool("test", "rules", "scaling_test.yml", cwd=PROM)
    used = {n for r in _scaling_rules() for n in re.findall(r"\bembedhost_[a-z_]+\b", r["expr"])}
    assert used == {"embedhost_load_ratio"}
    assert used <= exported_names()


def _per_pod_series() -> str:
    (rule,) = [r for r in _scaling_rules() if r["record"].startswith("instance:")]
    name: str = rule["record"]
    return name


def test_hpa_on_the_load_metric_with_cpu_fallback() -> None:
    hpa = _by_kind("HorizontalPodAutoscaler")
    spec = hpa["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "embedhost",
    }
    kinds = {m["type"]: m for m in spec["metrics"]}
    assert kinds["Pods"]["pods"]["metric"]["name"] == "embedhost_load_ratio"
    assert kinds["Pods"]["pods"]["target"] == {"type": "AverageValue", "averageValue": "750m"}
    assert kinds["Resource"]["resource"]["name"] == "cpu"
    assert spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300
    assert spec["minReplicas"] >= 2
    # The PDB lets a drain proceed while the minimum still serves.
    assert _by_kind("PodDisruptionBudget")["spec"]["maxUnavailable"] < spec["minReplicas"]


def test_prometheus_adapter_rule() -> None:
    values = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())
    (rule,) = values["rules"]["custom"]
    series = _per_pod_series()
    assert rule["seriesQuery"].startswith(series + "{")
    assert rule["resources"]["overrides"] == {
        "namespace": {"resource": "namespace"},
        "pod": {"resource": "pod"},
    }
    assert re.fullmatch(rule["name"]["matches"], series)
    # The name the HPA asks the custom metrics API for.
    hpa = _by_kind("HorizontalPodAutoscaler")
    assert rule["name"]["as"] == next(
        m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"
    )
    for token in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
        assert token in rule["metricsQuery"]


def test_keda_scaledobject() -> None:
    kust = yaml.safe_load((K8S / "keda" / "kustomization.yaml").read_text())
    assert kust["kind"] == "Component"
    assert kust["resources"] == ["scaledobject.yaml"]
    (patch,) = kust["patches"]
    deleted = yaml.safe_load(patch["patch"])
    assert deleted["$patch"] == "delete" and deleted["kind"] == "HorizontalPodAutoscaler"
    so = _one(K8S / "keda" / "scaledobject.yaml")
    assert so["apiVersion"] == "keda.sh/v1alpha1" and so["kind"] == "ScaledObject"
    spec = so["spec"]
    assert spec["scaleTargetRef"]["name"] == "embedhost"
    hpa = _by_kind("HorizontalPodAutoscaler")["spec"]
    assert spec["minReplicaCount"] == hpa["minReplicas"]
    assert spec["maxReplicaCount"] == hpa["maxReplicas"]
    triggers = {t["type"]: t for t in spec["triggers"]}
    prom = triggers["prometheus"]
    assert prom["metricType"] == "AverageValue"
    meta = prom["metadata"]
    assert set(meta) >= {"serverAddress", "query", "threshold"}
    assert meta["serverAddress"].startswith("http")
    # An empty answer is an error (then fallback), never a silent "zero load".
    assert meta.get("ignoreNullValues", "true") == "false"
    assert spec["fallback"]["replicas"] > spec["minReplicaCount"]
    assert _per_pod_series() + "{" in meta["query"]
    assert meta["query"].startswith("sum(")  # KEDA divides by the replica count
    assert float(meta["threshold"]) == 0.75  # the HPA's 750m
    assert triggers["cpu"]["metricType"] == "Utilization"
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 300


# -- nginx -----------------------------------------------------------------------------------


def test_nginx_conf_matches_the_server_limits(tmp_path: Path) -> None:
    """The directives the issue asks for, with values taken from configs/production.yaml;
    and Debian's nginx accepts the file (tests/integration/test_replicas_nginx.py runs it)."""
    conf = (DEPLOY / "nginx" / "embedhost.conf").read_text()
    prod = yaml.safe_load((ROOT / "configs/production.yaml").read_text())

    def directive(name: str) -> str:
        values = re.findall(rf"^\s*{name}\s+([^;]+);", conf, flags=re.M)
        assert len(values) == 1, f"{name}: {values}"
        return values[0].strip()

    assert directive("client_max_body_size") == f"{prod['limits']['max_body_bytes'] // 2**20}m"
    assert directive("client_body_timeout") == f"{int(prod['server']['timeout_body_read_s'])}s"
    assert directive("client_header_timeout") == f"{int(prod['server']['timeout_header_read_s'])}s"
    # nginx closes idle upstream connections before the server does.
    assert int(directive("keepalive_timeout").rstrip("s")) < prod["server"]["timeout_keep_alive_s"]
    assert re.search(r"^\s*least_conn;", conf, flags=re.M)
    assert int(directive("keepalive")) > 0
    # Retries on connection errors and timeouts only: a 503/429 (with its Retry-After)
    # goes to the client, and never makes nginx mark a shedding replica down (502s).
    assert directive("proxy_next_upstream").split() == ["error", "timeout", "non_idempotent"]
    assert re.search(r"^\s*access_log /dev/stdout embedhost;", conf, flags=re.M)
    assert directive("error_log") == "/dev/stderr warn"
    assert directive("error_page") == "502 504 = @unavailable"
    assert "non_idempotent lets nginx retry POSTs" in conf  # the comment saying why it is safe
    assert directive("proxy_set_header X-Forwarded-For") == "$proxy_add_x_forwarded_for"
    assert directive("proxy_set_header X-Request-Id") == "$embedhost_request_id"
    assert re.search(r"^\s*add_header X-Upstream-Addr \$upstream_addr always;", conf, flags=re.M)
    exe = shutil.which("nginx") or "/usr/sbin/nginx"
    main = nginx_conf(tmp_path, 18080, ["127.0.0.1:18001", "127.0.0.1:18002"])
    r = subprocess.run(
        [exe, "-t", "-p", str(tmp_path), "-e", str(tmp_path / "error.log"), "-c", str(main)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
