"""A real ``embedhost serve`` with an embedding model and a reranker side by side:
Cohere's SDK (``ClientV2(base_url=...)``) reranks unchanged; both tasks under concurrent
load answer 2xx only, the embedding vectors unchanged; the reranker is hot-swapped under
rerank load with no failure."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.support import MINILM
from tests.support.engines import SENTENCES
from tests.support.servers import LiveServer, start_server, stop_server
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow

QUERY = "How do plants turn light into energy?"


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, cross_encoder_dir: Path
) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("rerank-live")
    srv = start_server(
        tmp,
        {
            "models": [
                {"name": "minilm", "path": MINILM, "dtype": "float32", "threads": 1},
                {"name": "ce", "path": str(cross_encoder_dir), "dtype": "float32", "threads": 1},
            ],
            "worker": {"restart_backoff_initial_s": 0.2},
        },
    )
    yield srv
    stop_server(srv)


def test_cohere_client_v2_reranks_unchanged(server: LiveServer) -> None:
    import cohere

    # The SDK's own client, with an httpx client the test closes (no socket left open).
    with httpx.Client(timeout=60) as http:
        co = cohere.ClientV2(api_key="unused", base_url=server.url, httpx_client=http)
        answer = co.rerank(model="ce", query=QUERY, documents=SENTENCES, top_n=4)
    plain = httpx.post(
        f"{server.url}/v2/rerank",
        json={"model": "ce", "query": QUERY, "documents": SENTENCES},
        timeout=60,
    ).json()["results"]
    assert [r.index for r in answer.results] == [r["index"] for r in plain[:4]]
    for got, want in zip(answer.results, plain, strict=False):
        assert abs(got.relevance_score - want["relevance_score"]) < 1e-6
    assert answer.id


def _load(
    url: str, n: int, work: Callable[[httpx.Client, int], tuple[int, Any]]
) -> tuple[threading.Event, list[threading.Thread], list[tuple[float, int, Any]]]:
    """``n`` client threads calling ``work`` until the event is set; (sent, status, value)."""
    stop = threading.Event()
    results: list[tuple[float, int, Any]] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as c:
            i = k
            while not stop.is_set():
                i += 1
                sent = time.monotonic()
                try:
                    status, value = work(c, i)
                except httpx.HTTPError as exc:
                    status, value = -1, repr(exc)
                with lock:
                    results.append((sent, status, value))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    return stop, threads, results


def _embed(c: httpx.Client, i: int) -> tuple[int, Any]:
    text = SENTENCES[i % len(SENTENCES)]
    r = c.post("/v1/embeddings", json={"model": "minilm", "input": text})
    return r.status_code, (
        i % len(SENTENCES),
        r.json()["data"][0]["embedding"] if r.is_success else r.text,
    )


def _rerank(c: httpx.Client, i: int) -> tuple[int, Any]:
    docs = SENTENCES[i % 3 :]
    r = c.post("/v1/rerank", json={"model": "ce", "query": QUERY, "documents": docs})
    return r.status_code, (r.headers.get("x-embedhost-model"), r.json() if r.is_success else r.text)


def test_both_tasks_under_concurrent_load(server: LiveServer) -> None:
    url = server.url
    baseline = np.array(
        [
            d["embedding"]
            for d in httpx.post(
                f"{url}/v1/embeddings", json={"model": "minilm", "input": SENTENCES}, timeout=60
            ).json()["data"]
        ]
    )
    stop_e, threads_e, embeds = _load(url, 2, _embed)
    stop_r, threads_r, reranks = _load(url, 2, _rerank)
    try:
        wait_until(lambda: len(embeds) >= 40 and len(reranks) >= 20, "load on both tasks")
    finally:
        stop_e.set()
        stop_r.set()
        for t in threads_e + threads_r:
            t.join()
    bad = [(s, v) for _, s, v in embeds + reranks if not 200 <= s < 300]
    assert not bad, bad[:3]
    for _, _, (idx, vec) in embeds:
        np.testing.assert_allclose(vec, baseline[idx], atol=1e-5)


def test_hot_swap_of_the_reranker_under_load(server: LiveServer, cross_encoder_dir: Path) -> None:
    url = server.url
    stop, threads, results = _load(url, 3, _rerank)
    try:
        wait_until(lambda: len(results) >= 5, "rerank load")
        r = httpx.post(
            f"{url}/admin/models/ce/versions",
            json={
                "version": "2",
                "path": str(cross_encoder_dir),
                "dtype": "float32",
                "threads": 1,
                "wait": True,
            },
            timeout=300,
        )
        assert r.status_code == 201, r.text
        r = httpx.post(f"{url}/admin/models/ce/promote", json={"version": "2"}, timeout=60)
        assert r.status_code == 200, r.text
        promoted = time.monotonic()
        wait_until(lambda: sum(1 for sent, *_ in results if sent > promoted) >= 5, "answers after")
    finally:
        stop.set()
        for t in threads:
            t.join()
    bad = [(s, v) for _, s, v in results if s != 200]
    assert not bad, bad[:3]
    tags = {v[0] for _, _, v in results}
    assert tags == {"ce@1", "ce@2"}
    after = {v[0] for sent, _, v in results if sent > promoted}
    assert after == {"ce@2"}


def test_loadtest_rerank_mode(server: LiveServer) -> None:
    import json

    from typer.testing import CliRunner

    from embedhost.cli import cli

    args = ["loadtest", "--url", server.url, "--model", "ce", "--rerank"]
    args += ["--requests", "6", "--texts-per-request", "20", "--corpus", "passages", "--json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    run = json.loads(result.stdout)["runs"][0]
    assert run["url"] == f"{server.url}/v1/rerank"
    assert run["results"]["ok"] == 6 and not run["results"]["errors"]


def test_console_rerank_playground(server: LiveServer) -> None:
    """The console's rerank playground in Debian's chromium (headless): its scores are the
    API's, best first; no script error or CSP violation."""
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            page.goto(server.url + "/", wait_until="domcontentloaded")
            page.wait_for_selector("#rerank-playground:not([hidden])", timeout=30_000)
            page.select_option("#rerank-model", "ce")
            page.click("#rerank")
            page.wait_for_selector("#rerank-results:not([hidden])", timeout=30_000)
            shown = page.eval_on_selector_all(
                "#rerank-results td.score", "els => els.map(e => [+e.dataset.i, +e.textContent])"
            )
            docs = page.input_value("#rerank-docs").split("\n")
            query = page.input_value("#rerank-query")
        finally:
            browser.close()
    api = httpx.post(
        f"{server.url}/v1/rerank",
        json={"model": "ce", "query": query, "documents": docs},
        timeout=60,
    ).json()["results"]
    assert [i for i, _ in shown] == [r["index"] for r in api]
    for (_, score), r in zip(shown, api, strict=True):
        assert abs(score - r["relevance_score"]) < 1e-4
    assert not problems, problems
