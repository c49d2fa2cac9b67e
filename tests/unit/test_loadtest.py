"""``embedhost loadtest``'s parts: the endpoint, the bodies, the summary, the displays."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from embedhost.cli.loadtest import (
    BUNDLED,
    LiveView,
    Load,
    Recorder,
    Target,
    read_corpus,
    report_table,
    request_bodies,
)


@pytest.mark.parametrize(
    ("url", "endpoint"),
    [
        ("http://h:1", "http://h:1/v1/embeddings"),
        ("http://h:1/", "http://h:1/v1/embeddings"),
        ("http://h:1/v1", "http://h:1/v1/embeddings"),
        ("http://h:1/openai/v1/", "http://h:1/openai/v1/embeddings"),
        ("http://h:1/x/embeddings", "http://h:1/x/embeddings"),
    ],
)
def test_endpoint(url: str, endpoint: str) -> None:
    assert Target(url).endpoint == endpoint


def test_bundled_corpora_ship_with_the_package() -> None:
    for name in BUNDLED:
        texts = read_corpus(name)
        assert len(texts) > 200 and all(t.strip() == t and t for t in texts)


def test_bodies_walk_the_corpus_and_cycle() -> None:
    texts = ["a", "b", "c", "d", "e"]
    load = Load(requests=10, texts_per_request=2, input_type="query")
    bodies = [json.loads(b) for b in request_bodies(texts, Target("u", "m"), load)]
    assert len(bodies) == 5  # 2 texts a request over 5 texts: the cycle repeats after 5
    assert [b["input"] for b in bodies] == [
        ["a", "b"],
        ["c", "d"],
        ["e", "a"],
        ["b", "c"],
        ["d", "e"],
    ]
    assert all(b["model"] == "m" and b["input_type"] == "query" for b in bodies)
    plain = json.loads(request_bodies(texts, Target("u"), Load(requests=1))[0])
    assert plain == {"input": ["a"]}


def test_load_validation() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        Load(requests=1, duration_s=1)
    with pytest.raises(ValueError, match="exactly one"):
        Load()
    with pytest.raises(ValueError, match="rate"):
        Load(requests=1, rate=0)


def _recorder() -> Recorder:
    rec = Recorder(started=0.0, finished=2.0)
    for ms in (10, 20, 30, 40):
        rec.ok(ms / 1000, 2)
    rec.error("503")
    rec.error("503")
    rec.error("timeout")
    rec.sent = 7
    return rec


def test_summary() -> None:
    s = _recorder().summary()
    assert (s["requests"], s["ok"], s["texts"]) == (7, 4, 8)
    assert s["errors"] == {"503": 2, "timeout": 1}
    assert (s["requests_per_s"], s["ok_per_s"], s["texts_per_s"]) == (3.5, 2.0, 4.0)
    assert s["latency_ms"] == {
        "p50": 25.0,
        "p95": 38.5,
        "p99": 39.7,
        "mean": 25.0,
        "min": 10.0,
        "max": 40.0,
    }


def test_live_view_and_report_render() -> None:
    console = Console(record=True, width=160)
    load = Load(requests=7)
    console.print(LiveView("server", load, _recorder()))
    live = console.export_text()
    assert "server: 7/7" in live
    for col in ("req/s", "texts/s", "p50", "p95", "p99", "errors"):
        assert col in live
    assert "503: 2, timeout: 1" in live
    console.print(report_table(load, [("A", _recorder().summary()), ("B", _recorder().summary())]))
    report = console.export_text()
    assert "7 requests, 8 concurrent" in report
    assert "25.0 ms" in report and "3.5" in report
