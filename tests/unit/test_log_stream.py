"""server.log_stream: the API process and its workers log to the stream it names."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SCRIPT = """
import logging, sys
from embedhost.logs import setup_logging, worker_log_config
setup_logging("info", "json", destination=sys.argv[1])
logging.getLogger("embedhost.test").info("hello")
print("CONFIG " + repr(worker_log_config()), file=sys.stderr)
"""


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_the_log_goes_to_the_named_stream(stream: str) -> None:
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT, stream], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    chosen, other = (r.stdout, r.stderr) if stream == "stdout" else (r.stderr, r.stdout)
    records = [json.loads(x) for x in chosen.splitlines() if x.startswith("{")]
    assert [x["event"] for x in records] == ["hello"]
    assert not [x for x in other.splitlines() if x.startswith("{")]
    # The workers a process spawns are set up the same way (worker_log_config).
    assert f"'destination': '{stream}'" in r.stderr
