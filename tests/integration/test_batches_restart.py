"""The Batch API on a real server process: a job across a SIGKILL of the server
(restarted on the same data directory, the job resumes at its last recorded chunk and
finishes with every line exactly once), and the README's "Bulk embedding" example."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
from pathlib import Path
from typing import Any

from openai import OpenAI

from tests.fakes import GATE
from tests.support import MINILM, ROOT
from tests.support.app import FAKE_ENGINE
from tests.support.servers import LiveServer, start_server, stop_server
from tests.support.wait import wait_until

LINES = 1000
CHUNK = 25
HELD_AT = 610  # this line holds the engine (the fake's gate) until the restart


def _config(tmp_path: Path) -> dict[str, Any]:
    return {
        "models": [
            {
                "name": "fake",
                "engine": FAKE_ENGINE,
                "path": MINILM,
                "version": "1",
                "engine_options": {"gate": str(tmp_path / "gate")},
            }
        ],
        "jobs": {"data_dir": str(tmp_path / "data"), "chunk_lines": CHUNK},
    }


def _counts(sdk: OpenAI, batch_id: str) -> tuple[str, int, int]:
    b = sdk.batches.retrieve(batch_id)
    assert b.request_counts is not None
    return b.status, b.request_counts.completed, b.request_counts.failed


def test_a_job_survives_a_sigkill_of_the_server(tmp_path: Path) -> None:
    config = _config(tmp_path)
    server: LiveServer | None = start_server(tmp_path, config)
    assert server is not None
    workers = server.worker_pids()
    try:
        sdk = OpenAI(api_key="none", base_url=f"{server.url}/v1")
        rows = []
        for i in range(LINES):
            body: dict[str, Any] = {"input": f"line number {i}"}
            if i == HELD_AT:
                body = {"input": [GATE, i]}
            rows.append(
                json.dumps(
                    {"custom_id": f"c{i}", "method": "POST", "url": "/v1/embeddings", "body": body}
                )
            )
        f = sdk.files.create(file=("in.jsonl", ("\n".join(rows) + "\n").encode()), purpose="batch")
        b = sdk.batches.create(
            input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h"
        )
        recorded = HELD_AT - HELD_AT % CHUNK  # every chunk before the held one
        wait_until(
            lambda: _counts(sdk, b.id)[1] >= recorded,
            "the chunks before the held line to be recorded",
            timeout=120,
        )
        status, completed, _ = _counts(sdk, b.id)
        assert status == "in_progress" and completed == recorded
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait(30)
        server = None
        # A crash between appending a chunk and recording it leaves lines past the recorded
        # size: the restart must cut them off, not keep them twice.
        work = tmp_path / "data" / "work" / f"{b.id}.out"
        with work.open("ab") as w:
            w.write(b'{"custom_id": "c600", "unrecorded": true}\n')
        (tmp_path / "gate").touch()
        server = start_server(tmp_path, config)
        workers += server.worker_pids()
        sdk = OpenAI(api_key="none", base_url=f"{server.url}/v1")
        wait_until(lambda: _counts(sdk, b.id)[0] == "completed", "the resumed job", timeout=120)
        status, completed, failed = _counts(sdk, b.id)
        assert (completed, failed) == (LINES, 0)
        done = sdk.batches.retrieve(b.id)
        assert done.output_file_id is not None and done.error_file_id is None
        out = [json.loads(x) for x in sdk.files.content(done.output_file_id).text.splitlines()]
        assert [o["custom_id"] for o in out] == [f"c{i}" for i in range(LINES)]
    finally:
        if server is not None:
            stop_server(server)
        (tmp_path / "gate").touch()
        for pid in workers:  # the killed server's workers, orphaned
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_readme_bulk_example_runs(tmp_path: Path) -> None:
    config = _config(tmp_path)
    config["models"][0].update(name="all-MiniLM-L6-v2", engine_options={"dims": 384})
    server = start_server(tmp_path, config)
    try:
        readme = (ROOT / "README.md").read_text()
        section = readme.split("## Bulk embedding", 1)[1].split("\n## ", 1)[0]
        (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
        printed: list[str] = []

        def capture(*args: object) -> None:
            printed.append(" ".join(map(str, args)))

        code = code.replace("http://127.0.0.1:8008", server.url)
        exec(compile(code, "README.md", "exec"), {"print": capture})
        assert printed == ["completed 2", "doc-0 384", "doc-1 384"]
    finally:
        stop_server(server)
