"""The wheel as a user installs it: build it, install it into clean virtual environments
(once with no extras, once with ``[all]``), and from each run every CLI command's
``--help``, then serve the default model with the installed ``embedhost serve`` and call it
with the installed ``embedhost models list`` and ``embedhost embed``.

Nothing from the source tree leaks in: no PYTHONPATH, the working directory is outside the
repository, and the test checks that ``embedhost`` is imported from the new environment.

uv builds the wheel and installs it (pip takes minutes to unpack and byte-compile torch
twice). uv does not read pip's configuration, so it is handed pip's ``find-links`` (where
this machine keeps the CPU build of torch) and the wheels pip has already built (the
llama-cpp-python that ``scripts/setup`` compiled), and torch is pinned to the exact build
the development environment has: a CUDA torch can never be pulled. Cost on this machine,
shared and loaded: about 30 s cold per environment (uv's cache empty), a few seconds
warm, plus a server start and ~20 CLI processes each; about 1-2 min in all.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

from embedhost.cli import cli
from tests.support import MINILM, ROOT
from tests.support.servers import free_port, wait_answering

pytestmark = pytest.mark.slow

UV = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")


def _clean_env() -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("VIRTUAL_ENV")
    }
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


def _run(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=timeout
    )


def _pip_wheel_sources(tmp: Path) -> list[str]:
    """pip's find-links and a flat folder of the wheels pip has built (uv reads neither)."""
    pip = [sys.executable, "-m", "pip"]
    links: list[str] = []
    cfg = subprocess.run([*pip, "config", "list"], capture_output=True, text=True).stdout
    for line in cfg.splitlines():
        key, _, value = line.partition("=")
        if key.endswith("find-links"):
            links += value.strip("'\"").split()
    links += os.environ.get("PIP_FIND_LINKS", "").split()
    built = tmp / "pip-built"
    built.mkdir()
    cached = subprocess.run(
        [*pip, "cache", "list", "--format=abspath"], capture_output=True, text=True
    ).stdout
    for path in map(Path, cached.split()):
        if path.suffix == ".whl" and not (built / path.name).exists():
            (built / path.name).symlink_to(path)
    return [*dict.fromkeys(links), str(built)]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert UV, "uv is a dev dependency (pip install -e '.[dev]')"
    out = tmp_path_factory.mktemp("dist")
    r = _run([UV, "build", "--wheel", "--out-dir", str(out), str(ROOT)], cwd=out)
    assert r.returncode == 0, r.stderr
    (whl,) = out.glob("embedhost-*.whl")
    return whl


def _install(tmp: Path, wheel: Path, extras: str) -> Path:
    import torch

    venv = tmp / "venv"
    r = _run([UV, "venv", "-q", "--no-python-downloads", "-p", sys.executable, str(venv)], tmp)
    assert r.returncode == 0, r.stderr
    constraints = tmp / "constraints.txt"
    constraints.write_text((ROOT / "constraints.txt").read_text() + f"torch=={torch.__version__}\n")
    links = [a for link in _pip_wheel_sources(tmp) for a in ("--find-links", link)]
    spec = f"{wheel}[{extras}]" if extras else str(wheel)
    python = str(venv / "bin" / "python")
    r = _run([UV, "pip", "install", "-q", "-p", python, "-c", str(constraints), *links, spec], tmp)
    assert r.returncode == 0, r.stderr
    where = _run([python, "-c", "import embedhost; print(embedhost.__file__)"], tmp)
    assert where.stdout.strip().startswith(str(venv)), where.stdout + where.stderr
    return venv


def _command_paths() -> list[list[str]]:
    """Every command of the CLI, as the words that call it (groups included)."""
    paths: list[list[str]] = []

    def walk(cmd: Any, path: list[str]) -> None:
        paths.append(path)
        for name, sub in getattr(cmd, "commands", {}).items():  # a group (typer's own click)
            walk(sub, [*path, name])

    walk(typer.main.get_command(cli), [])
    return paths


@pytest.fixture(scope="module", params=["", "all"], ids=["no-extras", "all"])
def installed(
    request: pytest.FixtureRequest, wheel: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    tmp = tmp_path_factory.mktemp(f"venv-{request.param or 'base'}")
    venv = _install(tmp, wheel, request.param)
    yield venv
    shutil.rmtree(venv, ignore_errors=True)


def test_every_command_has_help(installed: Path) -> None:
    exe = str(installed / "bin" / "embedhost")
    paths = _command_paths()
    assert ["models", "list"] in paths and ["embed"] in paths and ["serve"] in paths
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda p: _run([exe, *p, "--help"], installed, 120), paths))
    for path, r in zip(paths, results, strict=True):
        assert r.returncode == 0, (path, r.stdout, r.stderr)
        assert "Usage" in r.stdout, (path, r.stdout)


def test_serve_models_list_and_embed_from_the_install(installed: Path) -> None:
    exe = str(installed / "bin" / "embedhost")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cfg = installed.parent / "config.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "server": {"port": port},
                "models": [{"name": "all-MiniLM-L6-v2", "path": MINILM, "dtype": "float32"}],
            }
        )
    )
    log = installed.parent / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [exe, "serve", "--config", str(cfg)],
            cwd=installed.parent,
            env=_clean_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_ready(url, proc, log)
        r = _run([exe, "models", "list", "--url", url], installed.parent, 60)
        assert r.returncode == 0, r.stderr
        rows = [line.split() for line in r.stdout.splitlines()]
        assert rows[0][:3] == ["MODEL", "VERSION", "STATE"]
        assert ["all-MiniLM-L6-v2", "1", "ready", "current"] == rows[1][:4], r.stdout
        r = _run([exe, "embed", "--url", url, "hello", "world"], installed.parent, 60)
        assert r.returncode == 0, r.stderr
        body = json.loads(r.stdout)
        assert [len(d["embedding"]) for d in body["data"]] == [384, 384]
    finally:
        proc.terminate()
        proc.wait(30)


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 180) -> None:
    wait_answering(proc, f"{url}/ready", timeout=timeout, every=0.2, log=log)
