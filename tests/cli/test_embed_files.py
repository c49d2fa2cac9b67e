"""``embedhost embed INPUT -o OUTPUT``: every input and output format, resume, retries on
429 honouring Retry-After, bad rows, and --local against a server. The server is the real
app in-process (ASGI transport); the fake engine where only the plumbing is under test,
MiniLM where vectors are compared."""

from __future__ import annotations

import asyncio
import csv
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import pytest_asyncio
import yaml
from fastapi import FastAPI
from typer.testing import CliRunner

from embedhost.cli import cli
from embedhost.cli.corpus import (
    BadRow,
    HttpEmbedder,
    LocalEmbedder,
    embed_corpus,
    read_rows,
    retry_after,
    text_hash,
)
from tests.support import MINILM
from tests.support.app import app_client, fake_model, make_settings
from tests.support.servers import free_port

TEXTS = [f"sentence number {i} about {w}" for i, w in enumerate("abcdefghijklm")]
IDS = [f"doc-{i}" for i in range(len(TEXTS))]


@pytest_asyncio.fixture(scope="module")
async def app() -> AsyncIterator[FastAPI]:
    settings = make_settings(
        [fake_model("fake"), fake_model("fake-refuse", truncation="refuse", max_input_tokens=8)]
    )
    async with app_client(settings) as (application, _):
        yield application


def embedder(app: FastAPI, transport: Any = None, **kw: Any) -> HttpEmbedder:
    return HttpEmbedder(
        "http://testserver", transport=transport or httpx.ASGITransport(app=app), **kw
    )


async def reference(app: FastAPI, texts: list[str], model: str = "fake") -> np.ndarray:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver"
    ) as c:
        r = await c.post("/v1/embeddings", json={"model": model, "input": texts})
        assert r.status_code == 200, r.text
        return np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)


def write_input(path: Path, texts: list[str], ids: list[str] | None = None) -> Path:
    """``path`` in its format, with fields ``body`` and ``key`` (not the defaults)."""
    ids = ids or IDS[: len(texts)]
    recs = [{"key": i, "body": t} for i, t in zip(ids, texts, strict=True)]
    kind = path.suffix
    if kind == ".txt":
        path.write_text("".join(t + "\n" for t in texts))
    elif kind == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    elif kind == ".json":
        path.write_text(json.dumps(recs))
    elif kind == ".csv":
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, ["key", "body"])
            w.writeheader()
            w.writerows(recs)
    elif kind == ".parquet":
        pq.write_table(pa.Table.from_pylist(recs), path)
    return path


def read_output(path: Path) -> tuple[list[str], np.ndarray, list[str] | None]:
    """ids, vectors and text hashes (None for .npy) of an output file."""
    if path.suffix == ".parquet":
        t = pq.read_table(path)
        vecs = np.array(t.column("embedding").to_pylist(), dtype=np.float32)
        return t.column("id").to_pylist(), vecs, t.column("text_sha256").to_pylist()
    if path.suffix == ".npy":
        ids = path.with_suffix(".ids.txt").read_text().splitlines()
        return ids, np.load(path), None
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    vecs = np.array([r["embedding"] for r in recs], dtype=np.float32)
    return [r["id"] for r in recs], vecs, [r["text_sha256"] for r in recs]


@pytest.mark.parametrize("kind", [".txt", ".jsonl", ".json", ".csv", ".parquet"])
async def test_every_input_format(app: FastAPI, tmp_path: Path, kind: str) -> None:
    src = write_input(tmp_path / f"in{kind}", TEXTS)
    out = tmp_path / "out.jsonl"
    fields = {} if kind == ".txt" else {"text_field": "body", "id_field": "key"}
    s = await embed_corpus(src, out, embedder(app), batch_size=3, concurrency=3, **fields)
    assert s.error is None and s.embedded == len(TEXTS)
    ids, vecs, hashes = read_output(out)
    # .txt ids are line numbers
    assert ids == ([str(i) for i in range(1, len(TEXTS) + 1)] if kind == ".txt" else IDS)
    assert hashes == [text_hash(t) for t in TEXTS]
    np.testing.assert_allclose(vecs, await reference(app, TEXTS), rtol=1e-6)


def test_default_fields_and_row_numbers(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "a", "id": 7}\n\n{"text": "b"}\n"plain string"\n')
    rows = list(read_rows(src))
    assert [(r.number, r.id, r.text) for r in rows] == [
        (1, "1", "a"),
        (3, "3", "b"),
        (4, "4", "plain string"),
    ]
    rows_with_ids = read_rows(src, id_field="id")
    assert next(rows_with_ids).id == "7"
    with pytest.raises(BadRow, match="row 3: no id in field 'id'"):
        next(rows_with_ids)


@pytest.mark.parametrize("kind", [".parquet", ".npy", ".jsonl"])
async def test_every_output_format_and_resume(app: FastAPI, tmp_path: Path, kind: str) -> None:
    out = tmp_path / f"vectors{kind}"
    first = write_input(tmp_path / "first.jsonl", TEXTS[:5])
    s = await embed_corpus(
        first, out, embedder(app), text_field="body", id_field="key", batch_size=2
    )
    assert (s.embedded, s.error) == (5, None)
    full = write_input(tmp_path / "full.jsonl", TEXTS)
    refused = await asyncio.gather(
        embed_corpus(full, out, embedder(app), text_field="body", id_field="key"),
        return_exceptions=True,
    )
    assert "--resume" in str(refused[0])  # an existing output needs --resume or --overwrite
    s = await embed_corpus(
        full, out, embedder(app), text_field="body", id_field="key", batch_size=4, resume=True
    )
    assert (s.skipped, s.embedded, s.error) == (5, len(TEXTS) - 5, None)
    ids, vecs, _ = read_output(out)
    assert ids == IDS
    assert vecs.dtype == np.float32 and vecs.shape == (len(TEXTS), 32)
    np.testing.assert_allclose(vecs, await reference(app, TEXTS), rtol=1e-6)


async def test_resume_after_an_interrupted_jsonl_write(app: FastAPI, tmp_path: Path) -> None:
    src = write_input(tmp_path / "in.jsonl", TEXTS)
    out = tmp_path / "out.jsonl"
    await embed_corpus(src, out, embedder(app), text_field="body", id_field="key")
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:4]) + lines[4][:20])  # killed halfway through row 5
    s = await embed_corpus(src, out, embedder(app), text_field="body", id_field="key", resume=True)
    assert (s.skipped, s.embedded) == (4, len(TEXTS) - 4)
    assert read_output(out)[0] == IDS


async def test_a_bad_row_stops_after_the_rows_before_it(app: FastAPI, tmp_path: Path) -> None:
    src = write_input(tmp_path / "in.jsonl", TEXTS)
    lines = src.read_text().splitlines(keepends=True)
    lines[7] = '{"key": "doc-7", "body": \n'
    src.write_text("".join(lines))
    out = tmp_path / "out.parquet"
    s = await embed_corpus(
        src, out, embedder(app), text_field="body", id_field="key", batch_size=3, concurrency=2
    )
    assert s.failed_row == 8
    assert s.error is not None and s.error.startswith("row 8: invalid JSON")
    assert read_output(out)[0] == IDS[:7]  # every row before it, written
    # Fixed, the run goes on from there.
    write_input(src, TEXTS)
    s = await embed_corpus(src, out, embedder(app), text_field="body", id_field="key", resume=True)
    assert (s.skipped, s.embedded, s.error) == (7, len(TEXTS) - 7, None)
    ids, vecs, _ = read_output(out)
    assert ids == IDS
    np.testing.assert_allclose(vecs, await reference(app, TEXTS), rtol=1e-6)


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ('{"body": "a", "key": "x"}\n{"body": "", "key": "y"}\n', "row 2: field 'body' is empty"),
        ('{"body": "a", "key": "x"}\n{"body": "b", "key": "x"}\n', "row 2: duplicate id 'x'"),
        ('{"body": "a", "key": "x"}\n{"text": "b", "key": "y"}\n', "row 2: no field 'body'"),
        ('{"body": "a", "key": "x"}\n{"body": 3, "key": "y"}\n', "row 2: field 'body' is not"),
    ],
)
async def test_bad_rows_name_their_row(
    app: FastAPI, tmp_path: Path, content: str, needle: str
) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text(content)
    out = tmp_path / "out.npy"
    s = await embed_corpus(src, out, embedder(app), text_field="body", id_field="key")
    assert s.error is not None and s.error.startswith(needle), s.error
    assert read_output(out)[0] == ["x"]


async def test_a_row_the_server_refuses_is_named(app: FastAPI, tmp_path: Path) -> None:
    texts = ["short one", "two", "this text is far too long for a limit of eight tokens", "x"]
    src = write_input(tmp_path / "in.txt", texts)
    out = tmp_path / "out.jsonl"
    s = await embed_corpus(
        src, out, embedder(app, model="fake-refuse"), batch_size=2, concurrency=1
    )
    assert s.failed_row == 3
    assert s.error is not None and "413" in s.error and "more than this model's limit" in s.error
    assert read_output(out)[0] == ["1", "2"]


class Throttled(httpx.AsyncBaseTransport):
    """Answers the first ``n`` requests 429 (or 503) with a Retry-After, then the app's."""

    def __init__(self, app: FastAPI, n: int, status: int = 429, after: str = "2") -> None:
        self.inner = httpx.ASGITransport(app=app)
        self.n, self.status, self.after = n, status, after
        self.requests = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        if self.requests <= self.n:
            return httpx.Response(
                self.status,
                headers={"Retry-After": self.after},
                json={"error": {"message": "slow down", "type": "rate_limit_error"}},
            )
        return await self.inner.handle_async_request(request)


@pytest.mark.parametrize(("status", "after", "waited"), [(429, "2", 2.0), (503, "0.25", 0.25)])
async def test_retries_honour_retry_after(
    app: FastAPI, tmp_path: Path, status: int, after: str, waited: float
) -> None:
    sleeps: list[float] = []

    async def sleep(s: float) -> None:
        sleeps.append(s)

    transport = Throttled(app, 3, status, after)
    src = write_input(tmp_path / "in.txt", TEXTS)
    out = tmp_path / "out.jsonl"
    s = await embed_corpus(
        src, out, embedder(app, transport, sleep=sleep), batch_size=5, concurrency=1
    )
    assert (s.embedded, s.error) == (len(TEXTS), None)
    assert sleeps == [waited] * 3
    np.testing.assert_allclose(read_output(out)[1], await reference(app, TEXTS), rtol=1e-6)


class Recording(httpx.AsyncBaseTransport):
    """The app's own transport, recording the ``Retry-After`` of each 429 it answers."""

    def __init__(self, app: FastAPI) -> None:
        self.inner = httpx.ASGITransport(app=app)
        self.retry_after: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        r = await self.inner.handle_async_request(request)
        if r.status_code == 429:
            self.retry_after.append(r.headers["retry-after"])
        return r


async def test_a_real_rate_limit_s_retry_after_is_what_is_waited(tmp_path: Path) -> None:
    """The server's own 429 (per-address budget): each wait is the Retry-After it sent
    (the budget refills in a minute, so the retries with this recorded clock still fail)."""
    settings = make_settings(
        [fake_model("fake")], rate_limits={"per_address": {"requests_per_minute": 1}}
    )
    sleeps: list[float] = []

    async def sleep(s: float) -> None:
        sleeps.append(s)

    async with app_client(settings) as (application, _):
        src = write_input(tmp_path / "in.txt", TEXTS[:4])
        out = tmp_path / "out.jsonl"
        transport = Recording(application)
        e = embedder(application, transport=transport, sleep=sleep, retries=2)
        s = await embed_corpus(src, out, e, batch_size=2, concurrency=1)
    assert s.error is not None and "429" in s.error
    assert read_output(out)[0] == ["1", "2"]  # the first request's rows are kept
    # The waits are the server's, not the client's own backoff (0.5 s, then 1 s).
    assert sleeps == [float(v) for v in transport.retry_after[:2]]
    assert all(1 <= x <= 60 for x in sleeps), sleeps


def test_retry_after_forms() -> None:
    assert retry_after("3") == 3.0
    assert retry_after(None) is None
    assert retry_after("soon") is None
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past


def test_cli_usage_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(cli, ["embed", "a.txt", "b.txt", "-o", str(tmp_path / "o.jsonl")])
    assert r.exit_code == 2 and "exactly one input file" in r.output
    r = runner.invoke(cli, ["embed", str(tmp_path / "missing.txt"), "-o", "o.jsonl", "-q"])
    assert r.exit_code == 2 and "no such file" in r.output
    src = write_input(tmp_path / "in.txt", TEXTS[:2])
    r = runner.invoke(cli, ["embed", str(src), "-o", str(tmp_path / "o.csv"), "-q"])
    assert r.exit_code == 2 and "unknown output format" in r.output


def test_local_and_server_give_the_same_vectors(tmp_path: Path) -> None:
    """`embedhost embed FILE -o OUT --local` (the real command, MiniLM in this process) and
    the same file against a server serving the same model."""
    src = write_input(tmp_path / "in.csv", TEXTS)
    local_out = tmp_path / "local.parquet"
    r = CliRunner().invoke(
        cli,
        [
            "embed",
            str(src),
            "-o",
            str(local_out),
            "--local",
            "--field",
            "body",
            "--id-field",
            "key",
        ],
    )
    assert r.exit_code == 0, r.output
    assert f"{len(TEXTS)} texts embedded" in r.output

    async def served() -> None:
        settings = make_settings([{"name": "minilm", "path": MINILM}])
        async with app_client(settings) as (application, _):
            await embed_corpus(
                src,
                tmp_path / "served.parquet",
                embedder(application),
                text_field="body",
                id_field="key",
                batch_size=4,
            )

    asyncio.run(served())
    local_ids, local_vecs, local_hashes = read_output(local_out)
    ids, vecs, hashes = read_output(tmp_path / "served.parquet")
    assert local_ids == ids == IDS and local_hashes == hashes
    assert local_vecs.shape == (len(TEXTS), 384)
    cos = (local_vecs * vecs).sum(axis=1)  # both normalized
    assert cos.min() >= 0.9999


def test_quick_local_embed_prints_json(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"models": [fake_model("fake", prompts={"query": "q: "})]}))
    r = CliRunner().invoke(
        cli, ["embed", "--local", "-c", str(cfg), "--input-type", "query", "hello", "world"]
    )
    assert r.exit_code == 0, r.output
    body = json.loads(r.output.strip().splitlines()[-1])
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert len(body["data"][0]["embedding"]) == 32
    r = CliRunner().invoke(cli, ["embed", "--local", "-c", str(cfg), "--input-type", "x", "hi"])
    assert r.exit_code == 1 and "unknown input_type 'x'" in r.output


def test_local_embedder_reports_a_bad_model() -> None:
    async def go() -> str:
        e = LocalEmbedder(model="nope")
        try:
            await e.start()
        except Exception as exc:
            return str(exc)
        finally:
            await e.close()
        return ""

    assert "not served here" in asyncio.run(go())


def test_cli_against_an_unreachable_server(tmp_path: Path) -> None:
    """The --url path of the command: a connection refused (after its retries) stops the
    run with exit code 1 and names the rows."""
    src = write_input(tmp_path / "in.txt", TEXTS[:3])
    out = tmp_path / "out.jsonl"
    url = f"http://127.0.0.1:{free_port()}"
    r = CliRunner().invoke(
        cli, ["embed", str(src), "-o", str(out), "--url", url, "--retries", "0", "-q"]
    )
    assert r.exit_code == 1, r.output
    assert "rows 1-3: cannot reach" in r.output
    assert "--resume" in r.output


def test_local_embedder_has_the_servers_cache(tmp_path: Path) -> None:
    """`--local` builds the server's own core (Core.build), its vector cache included: a
    repeated text is answered from memory, with the vector the engine gave."""
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"models": [fake_model("fake")]}))

    async def go() -> tuple[np.ndarray, np.ndarray, int, int]:
        e = LocalEmbedder(cfg)
        try:
            await e.start()
            first = await e.embed(["a repeated text", "another"])
            again = await e.embed(["a repeated text"])
            cache = e.core.cache
            return first, again, cache.memory_hits, cache.memory_misses
        finally:
            await e.close()

    first, again, hits, misses = asyncio.run(go())
    assert (hits, misses) == (1, 2)
    np.testing.assert_array_equal(again[0], first[0])
