"""Debian's nginx running deploy/nginx/embedhost.conf in front of loopback upstreams (the
site file rewritten by :func:`tests.support.deploy.nginx_conf`), as a child process."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.support.deploy import nginx_conf
from tests.support.servers import free_port, wait_answering


@contextlib.contextmanager
def run_nginx(tmp: Path, upstreams: list[str], *, probe: str = "/nginx_status") -> Iterator[str]:
    """nginx on a free loopback port; yields its URL once ``probe`` answers through it."""
    exe = shutil.which("nginx") or "/usr/sbin/nginx"
    assert os.path.exists(exe), "nginx is not installed: run scripts/system-deps"
    port = free_port()
    conf = nginx_conf(tmp, port, upstreams)
    args = [exe, "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(conf)]
    check = subprocess.run([*args, "-t"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    with (tmp / "nginx.out").open("wb") as out:
        proc = subprocess.Popen([*args, "-g", "daemon off;"], stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_answering(
            proc, f"{url}{probe}", timeout=20, every=0.05, log=tmp / "nginx.out", what="nginx"
        )
        yield url
    finally:
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
