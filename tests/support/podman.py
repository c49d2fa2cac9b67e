"""podman for the container tests: the image that scripts/image builds (once per test
session; cached layers after the first build) and a thin ``podman`` runner.

scripts/image sets podman up on a fresh Debian machine (packages, containers.conf, a
local base image) and builds deploy/docker/Dockerfile with ``--format docker`` (OCI images
drop HEALTHCHECK). The first build compiles llama.cpp; later ones reuse the layers.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import time

from tests.support import ROOT

TAG = "localhost/embedhost:pytest"


def podman(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("podman")
    assert exe, "podman is missing: scripts/image installs it (apt-get install podman ...)"
    r = subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert r.returncode == 0, f"podman {' '.join(args)}: {r.stdout[-2000:]}{r.stderr[-3000:]}"
    return r


@functools.cache
def built_image() -> str:
    """scripts/image's tag (the last line it prints), built once per session."""
    t0 = time.monotonic()
    r = subprocess.run(
        [str(ROOT / "scripts" / "image")],
        env={**os.environ, "TAG": TAG},
        capture_output=True,
        text=True,
        timeout=3600,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-6000:]
    tag = r.stdout.strip().splitlines()[-1]
    assert tag == TAG, r.stdout
    print(f"\nscripts/image: {tag} in {time.monotonic() - t0:.0f} s")
    return tag
