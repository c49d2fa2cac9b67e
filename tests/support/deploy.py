"""The deploy/ files as the tests read them: promtool, the metric names /metrics can
export, a Dockerfile's final stage (its ENV and command), and deploy/nginx/embedhost.conf
rewritten to run on loopback (the deploy-file tests check them, the image and nginx
replica tests run them)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from pydantic import BaseModel

from embedhost.config import API_KEYS_ENV, Settings
from embedhost.metrics import Metrics, StateSnapshot, WorkerSnapshot
from tests.support import ROOT

DEPLOY = ROOT / "deploy"
DOCKER = DEPLOY / "docker"
NGINX_CONF = DEPLOY / "nginx" / "embedhost.conf"


def promtool(*args: str, cwd: Path) -> str:
    exe = shutil.which("promtool")
    assert exe, "promtool is missing: run scripts/system-deps (Debian package prometheus)"
    r = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def exported_names() -> set[str]:
    """Every sample name /metrics can carry (series appear once labelled, so use families)."""
    m = Metrics(version="test")
    m.add_state(
        lambda: StateSnapshot(
            ready=True,
            draining=False,
            workers=[WorkerSnapshot("m", "1", 0, True, None)],
            overloaded_requests=0,
            rate_limit_storage_errors=0,
        )
    )
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "info": ("_info",),
        "gauge": ("",),
    }
    names: set[str] = set()
    for registry in {id(r): r for r in (m.registry, m.local)}.values():
        for family in registry.collect():
            names.update(family.name + s for s in suffixes.get(family.type, ("",)))
    return names


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        if buf.strip():
            op, _, rest = buf.strip().partition(" ")
            out.append((op.upper(), rest.strip()))
        buf = ""
    return out


def final_stage(path: Path) -> list[tuple[str, str]]:
    ins = instructions(path)
    last = max(i for i, (op, _) in enumerate(ins) if op == "FROM")
    return ins[last:]


def image_env(path: Path) -> dict[str, str]:
    """The final stage's ENV, as the container would see it (PATH left as written)."""
    env: dict[str, str] = {}
    for op, rest in final_stage(path):
        if op == "ENV":
            for k, v in re.findall(r"(\w+)=(\S+)", rest):
                env[k] = v
    return env


def image_command(path: Path) -> list[str]:
    stage = dict(final_stage(path))
    entry: list[str] = json.loads(stage["ENTRYPOINT"])
    cmd: list[str] = json.loads(stage.get("CMD", "[]"))
    return entry + cmd


def nginx_conf(tmp: Path, port: int, upstreams: list[str]) -> Path:
    """deploy/nginx/embedhost.conf with its upstreams, listen port and log on loopback/tmp."""
    text = NGINX_CONF.read_text()
    servers = re.findall(r"^\s*server embedhost-\d+:8008 (.*);$", text, flags=re.M)
    assert servers, "the upstream block lost its `server embedhost-N:8008 ...;` lines"
    params = servers[0]
    block = "".join(f"    server {u} {params};\n" for u in upstreams)
    text, n = re.subn(r"(?:^\s*server embedhost-\d+:8008 .*;\n)+", block, text, flags=re.M)
    assert n == 1
    text, n = re.subn(r"listen 8080;", f"listen 127.0.0.1:{port};", text)
    assert n == 1
    text = text.replace("/var/log/nginx/", f"{tmp}/")
    site = tmp / "embedhost.conf"
    site.write_text(text)
    main = tmp / "nginx.conf"
    temp = "".join(
        f"  {kind}_temp_path {tmp}/{kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    user = "user root;\n" if os.geteuid() == 0 else ""
    main.write_text(
        f"{user}worker_processes 1;\npid {tmp}/nginx.pid;\nerror_log {tmp}/error.log info;\n"
        f"events {{ worker_connections 512; }}\n"
        f"http {{\n{temp}  include {site};\n}}\n"
    )
    return main


# -- settings fed from deploy files --------------------------------------------------------


def setting_exists(var: str) -> bool:
    """Whether EMBEDHOST_A__B names a field a.b of the settings (or the keys variable)."""
    if var == API_KEYS_ENV:
        return True
    model: type[BaseModel] | None = Settings
    for part in var.removeprefix("EMBEDHOST_").lower().split("__"):
        if model is None or part not in model.model_fields:
            return False
        ann = model.model_fields[part].annotation
        nested = [a for a in (ann, *getattr(ann, "__args__", ())) if isinstance(a, type)]
        model = next((a for a in nested if issubclass(a, BaseModel)), None)
    return True


def check_config(config: Path, env: dict[str, str]) -> None:
    """`embedhost check-config` with ``env`` set: it must pass, and say serve would start."""
    bad = [k for k in env if k.startswith("EMBEDHOST_") and not setting_exists(k)]
    assert not bad, f"not settings: {bad}"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDHOST_")}
    r = subprocess.run(
        [sys.executable, "-m", "embedhost", "check-config", str(config)],
        env={**clean, **env, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "serve will refuse" not in r.stderr, r.stderr
