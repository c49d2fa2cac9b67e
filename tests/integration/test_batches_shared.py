"""The Batch API's shared store: job state in a real PostgreSQL (started by the test run)
and files in one directory that several replicas share.

- the Batch API through the SDK on PostgreSQL (in-process): output, list, cancel, files;
- the store's leases: one holder per job, a lapsed lease taken over, the old holder's
  writes refused (:class:`~embedhost.jobs.store.LeaseLost`);
- two ``embedhost serve`` processes on one database and one files directory: the one
  running a job is SIGKILLed mid-job, the other takes the job over when its lease lapses
  and finishes it with every line exactly once.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import openai
import psycopg
import pytest
from openai import OpenAI

from embedhost.config import JobsConfig
from embedhost.errors import NotFound
from embedhost.jobs.postgres import PostgresStore
from embedhost.jobs.store import BatchRecord, LeaseLost
from tests.fakes import GATE
from tests.support import MINILM
from tests.support.app import FAKE_ENGINE, app_client, fake_model, make_settings
from tests.support.postgres_server import PostgresServer
from tests.support.servers import LiveServer, start_server, stop_server
from tests.support.wait import wait_until, wait_until_async

LINES = 600
CHUNK = 20
HELD_AT = 330  # this line holds the engine (the fake's gate) until the holder is killed
LEASE_S = 4.0


def _batch(batch_id: str) -> BatchRecord:
    return BatchRecord(
        id=batch_id,
        input_file_id="file_in",
        endpoint="/v1/embeddings",
        completion_window="24h",
        created_at=0,
        expires_at=2**40,
        owner="k1",
    )


async def test_the_batch_api_on_postgres(postgres: PostgresServer, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    settings = make_settings(
        [fake_model(engine_options={"gate": str(gate)})],
        jobs={"data_dir": str(tmp_path / "shared"), "database_url": postgres.url,
              "chunk_lines": 7},
    )  # fmt: skip
    async with app_client(settings) as (app, _):
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), timeout=60)
        sdk = openai.AsyncOpenAI(api_key="none", base_url="http://testserver/v1", http_client=http)
        rows = [_row(f"c{i}", f"text {i}") for i in range(50)] + ["not json"]
        f = await sdk.files.create(file=("in.jsonl", "\n".join(rows).encode()), purpose="batch")
        b = await sdk.batches.create(
            input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h"
        )

        async def status(batch_id: str, want: str) -> bool:
            return (await sdk.batches.retrieve(batch_id)).status == want

        await wait_until_async(lambda: status(b.id, "completed"), "the batch", timeout=120)
        done = await sdk.batches.retrieve(b.id)
        assert done.request_counts is not None
        assert (done.request_counts.completed, done.request_counts.failed) == (50, 1)
        assert done.output_file_id is not None and done.error_file_id is not None
        out = (await sdk.files.content(done.output_file_id)).text.splitlines()
        assert [json.loads(x)["custom_id"] for x in out] == [f"c{i}" for i in range(50)]
        assert (tmp_path / "shared" / "files" / done.output_file_id).exists()

        held = _row("held", [GATE, 1])
        f2 = await sdk.files.create(file=("in2.jsonl", held.encode()), purpose="batch")
        b2 = await sdk.batches.create(
            input_file_id=f2.id, endpoint="/v1/embeddings", completion_window="24h"
        )
        await wait_until_async(lambda: status(b2.id, "in_progress"), "b2 to run", timeout=60)
        assert (await sdk.batches.cancel(b2.id)).status == "cancelling"
        gate.touch()
        await wait_until_async(lambda: status(b2.id, "cancelled"), "the cancel", timeout=60)
        page = await sdk.batches.list(limit=1)
        assert [x.id for x in page.data] == [b2.id] and page.has_more
        assert [x.id for x in (await sdk.batches.list(after=b2.id)).data] == [b.id]
        await sdk.files.delete(f.id)
        with pytest.raises(openai.NotFoundError):
            await sdk.files.retrieve(f.id)
        metrics = (await http.get("http://testserver/metrics")).text
        assert 'embedhost_batch_jobs{status="completed"} 1.0' in metrics


def _row(cid: str, inp: object) -> str:
    body = {"input": inp}
    return json.dumps({"custom_id": cid, "method": "POST", "url": "/v1/embeddings", "body": body})


def test_leases_hand_a_job_to_one_replica_at_a_time(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    a = PostgresStore(postgres.url, tmp_path / "shared", lease_s=1.0)
    b = PostgresStore(postgres.url, tmp_path / "shared", lease_s=1.0)
    try:
        src = tmp_path / "upload.jsonl"
        src.write_text('{"custom_id": "x"}\n')
        size = src.stat().st_size
        a.add_file("k1", src, "in.jsonl", "batch", "file_in")
        assert b.get_file("file_in", "k1").bytes == size
        assert b.file_path("file_in").read_text() == '{"custom_id": "x"}\n'
        assert [f.id for f in b.list_files("k1", "batch", None, 10)[0]] == ["file_in"]
        assert b.list_files("k1", "batch_output", None, 10) == ([], False)
        with pytest.raises(NotFound):
            b.get_file("file_in", "someone-else")

        rec = _batch("batch_1")
        a.add_batch(rec)
        assert b.get_batch("batch_1", "k1").status == "validating"
        mine = a.claim("batch_1")
        assert mine is not None and mine.id == "batch_1"
        assert b.claim("batch_1") is None  # held by a
        assert [r.id for r in b.active_batches()] == []
        mine.stamp("in_progress")
        mine.progress.next_line, mine.progress.out_bytes = 40, 1234
        assert a.save(mine) and a.renew("batch_1")
        with pytest.raises(LeaseLost):
            b.save(mine)  # b does not hold it: nothing written

        # a stops renewing (as a killed replica would): once the lease lapses b takes the
        # job over, from what a recorded last.
        taken = wait_until(lambda: b.claim("batch_1"), "the lease to lapse", timeout=20)
        assert taken.status == "in_progress" and taken.progress.next_line == 40
        assert taken.progress.out_bytes == 1234
        assert not a.renew("batch_1")
        mine.progress.next_line = 60
        with pytest.raises(LeaseLost):
            a.save(mine)
        assert b.get_batch("batch_1", any_owner=True).progress.next_line == 40

        # A cancel recorded meanwhile is not undone by the holder's next save.
        b.mark_cancelling("batch_1")
        taken.progress.next_line = 60
        assert not b.save(taken)
        assert b.status_of("batch_1") == "cancelling"
        taken.stamp("cancelled")
        assert b.save(taken)
        b.release("batch_1")
        assert b.count_by_status() == {"cancelled": 1}
        assert a.claim("batch_1") is None  # finished jobs are nobody's to take
        for i in range(3):
            a.add_batch(_batch(f"batch_p{i}"))
        page, more = a.list_batches("k1", None, 2)
        assert [r.id for r in page] == ["batch_p2", "batch_p1"] and more
        page, more = a.list_batches("k1", "batch_p1", 10)
        assert [r.id for r in page] == ["batch_p0", "batch_1"] and not more
    finally:
        a.close()
        b.close()


def _config(tmp_path: Path, database_url: str) -> dict[str, Any]:
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
        "jobs": {
            "data_dir": str(tmp_path / "shared"),
            "database_url": database_url,
            "chunk_lines": CHUNK,
            "lease_s": LEASE_S,
        },
    }


def _counts(sdk: OpenAI, batch_id: str) -> tuple[str, int, int]:
    b = sdk.batches.retrieve(batch_id)
    assert b.request_counts is not None
    return b.status, b.request_counts.completed, b.request_counts.failed


def _holder_pid(url: str, batch_id: str) -> int | None:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT lease_owner FROM embedhost_batches WHERE id = %s", (batch_id,)
        ).fetchone()
    if row is None or row[0] is None:
        return None
    return int(str(row[0]).split(":")[1])  # host:pid:token


@pytest.mark.parametrize("end", ["SIGKILL", "SIGSTOP"])
def test_a_replica_dies_mid_job_and_another_finishes_it(
    postgres: PostgresServer, tmp_path: Path, end: str
) -> None:
    """SIGKILL: the holder is gone. SIGSTOP: it stalls past its lease, the other takes the
    job over and finishes it, and the stalled one, continued, finds its lease lost and
    writes nothing."""
    config = _config(tmp_path, postgres.url)
    servers: list[LiveServer] = []
    workers: list[int] = []
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            servers.append(start_server(tmp_path / name, config))
            workers += servers[-1].worker_pids()
        sdks = [OpenAI(api_key="none", base_url=f"{s.url}/v1") for s in servers]
        rows = []
        for i in range(LINES):
            body: dict[str, Any] = {"input": [GATE, i] if i == HELD_AT else f"line number {i}"}
            rows.append(
                json.dumps(
                    {"custom_id": f"c{i}", "method": "POST", "url": "/v1/embeddings", "body": body}
                )
            )
        # Uploaded through one replica, the batch created through the other: one store.
        f = sdks[0].files.create(
            file=("in.jsonl", ("\n".join(rows) + "\n").encode()), purpose="batch"
        )
        b = sdks[1].batches.create(
            input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h"
        )
        recorded = HELD_AT - HELD_AT % CHUNK  # every chunk before the held one
        wait_until(
            lambda: _counts(sdks[0], b.id)[1] >= recorded,
            "the chunks before the held line to be recorded",
            timeout=120,
        )
        assert _counts(sdks[1], b.id) == ("in_progress", recorded, 0)
        pid = _holder_pid(postgres.url, b.id)
        (dead,) = [s for s in servers if s.proc.pid == pid]
        (alive,) = [s for s in servers if s is not dead]
        sdk = sdks[servers.index(alive)]
        os.kill(dead.proc.pid, getattr(signal, end))
        if end == "SIGKILL":
            dead.proc.wait(30)
            servers.remove(dead)
        else:
            wait_until(
                lambda: _holder_pid(postgres.url, b.id) == alive.proc.pid,
                "the other replica to take the lapsed lease",
                timeout=60,
            )
        # What the dead replica may have written past its last record is not kept.
        with (tmp_path / "shared" / "work" / f"{b.id}.out").open("ab") as w:
            w.write(b'{"custom_id": "c321", "unrecorded": true}\n')
        (tmp_path / "gate").touch()
        wait_until(lambda: _counts(sdk, b.id)[0] == "completed", "the taken-over job", timeout=120)
        assert _counts(sdk, b.id) == ("completed", LINES, 0)
        assert _holder_pid(postgres.url, b.id) is None  # released when it finished
        done = sdk.batches.retrieve(b.id)
        assert done.output_file_id is not None and done.error_file_id is None
        out = [json.loads(x) for x in sdk.files.content(done.output_file_id).text.splitlines()]
        assert [o["custom_id"] for o in out] == [f"c{i}" for i in range(LINES)]
        assert all(o["response"]["status_code"] == 200 for o in out)
        if end == "SIGSTOP":
            os.kill(dead.proc.pid, signal.SIGCONT)
            wait_until(
                lambda: "lease lost" in dead.log_path.read_text(),
                "the stalled replica to find its lease lost",
                timeout=60,
            )
            again = sdk.files.content(done.output_file_id).text.splitlines()
            assert [json.loads(x)["custom_id"] for x in again] == [f"c{i}" for i in range(LINES)]
            assert not (tmp_path / "shared" / "work" / f"{b.id}.out").exists()
            assert _counts(sdk, b.id) == ("completed", LINES, 0)
    finally:
        for s in servers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(s.proc.pid, signal.SIGCONT)
            stop_server(s)
        (tmp_path / "gate").touch()
        for worker in workers:  # the killed replica's workers, orphaned
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker, signal.SIGKILL)


def test_the_database_url_must_be_postgresql() -> None:
    with pytest.raises(ValueError, match="postgresql://"):
        JobsConfig(database_url="mysql://db/jobs")  # type: ignore[arg-type]
    assert JobsConfig().database_url is None  # the default: SQLite, nothing to install
