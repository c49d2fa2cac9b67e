"""The README's metrics table against what ``/metrics`` serves: every documented metric is
served with the documented type and labels, every served ``embedhost_*`` metric is
documented, and the label values the README lists (the rate limit's ``limit``) are the ones
the code emits."""

from __future__ import annotations

import re

import httpx
from prometheus_client.parser import text_string_to_metric_families

from embedhost.config import RateLimit
from embedhost.security.ratelimit import budgets_for
from tests.fakes import CRASH
from tests.support import ROOT
from tests.support.app import app_client, fake_model, make_settings, wait_ready

# The exposition names a counter with its _total and an info metric as a gauge ending in _info.
_EXPOSED_TYPE = {"counter": "counter", "gauge": "gauge", "histogram": "histogram", "info": "gauge"}


def readme_metrics() -> dict[str, tuple[str, set[str], str]]:
    """``name -> (type, labels, description)`` from the README's metrics table."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### Metrics", 1)[1].split("\n#", 1)[0]
    rows: dict[str, tuple[str, set[str], str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 4 or not cells[0].startswith("`embedhost_"):
            continue
        name = cells[0].strip("`")
        labels = {lb.strip() for lb in cells[2].split(",") if lb.strip()}
        rows[name] = (cells[1], labels, cells[3])
    return rows


def served(text: str) -> tuple[dict[str, str], dict[str, set[frozenset[str]]], dict[str, set[str]]]:
    """From the exposition: each family's TYPE, the label sets of its samples, and every
    value each label takes."""
    types = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            if not name.endswith("_created"):  # prometheus-client's creation timestamps
                types[name] = kind
    labelsets: dict[str, set[frozenset[str]]] = {}
    values: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.endswith("_created"):
                continue
            name = family.name + "_total" if family.type == "counter" else family.name
            name = name + "_info" if family.type == "info" else name
            labelsets.setdefault(name, set()).add(frozenset(set(s.labels) - {"le"}))
            for k, v in s.labels.items():
                values.setdefault(k, set()).add(v)
    return types, labelsets, values


_SERIES_ON_FIRST_EVENT = {
    "embedhost_cache_errors_total",
    # rerank/score traffic (tests/rerank/test_rerank_api.py checks their series)
    "embedhost_scored_documents_total",
    "embedhost_scored_tokens_total",
}


async def test_readme_metrics_match_what_metrics_serves() -> None:
    documented = readme_metrics()
    assert len(documented) >= 20, documented
    settings = make_settings(
        [fake_model("fake", max_input_tokens=16)],
        worker={"restart_backoff_initial_s": 0.05},
        rate_limits={"per_address": {"requests_per_minute": 12}},
    )
    async with app_client(settings) as (app, client):
        # Traffic that fills every labelled series: embeddings, an error, a worker crash
        # and restart, and last a refusal by the address's request budget.
        assert (await client.post("/v1/embeddings", json={"input": ["a", "b"]})).status_code == 200
        assert (await client.post("/embed", json={"text": "c"})).status_code == 200
        nope = await client.post("/v1/embeddings", json={"input": "a", "model": "nope"})
        assert nope.status_code == 404
        crash = await client.post("/v1/embeddings", json={"input": [101, CRASH, 102]})
        assert crash.status_code == 503
        await wait_ready(client)  # the worker is back
        # Another client address spends its budget, so this one can still read /metrics.
        other = httpx.ASGITransport(app=app, client=("127.0.0.2", 40000))
        async with httpx.AsyncClient(transport=other, base_url="http://testserver") as c2:
            codes = [(await c2.get("/v1/models")).status_code for _ in range(13)]
        assert codes[-1] == 429, codes
        text = (await client.get("/metrics")).text

    types, labelsets, values = served(text)
    ours = {n for n in types if n.startswith("embedhost_")}
    # Every served metric is documented, and every documented one is served.
    assert sorted(ours - set(documented)) == []
    assert sorted(set(documented) - ours) == []
    for name, (kind, labels, _) in documented.items():
        assert types[name] == _EXPOSED_TYPE[kind], (name, types[name], kind)
        if name in labelsets:
            assert labelsets[name] == {frozenset(labels)}, (name, labelsets[name], labels)
        else:
            # A labelled counter of rare events (cache errors by op) has no series until the
            # first one; everything else this run touches must have served its label set.
            assert labels and name in _SERIES_ON_FIRST_EVENT, (name, labels)
    # The rate limit's `limit` values: the README lists every value the code emits.
    _, _, description = documented["embedhost_rate_limited_requests_total"]
    listed = set(re.findall(r"`([a-z]+-[a-z]+)`", description))
    assert "addr-requests" in values["limit"]
    assert values["limit"] <= listed, (values["limit"], listed)
    # Every value the code can emit: each budget kind, with every budget set.
    full = RateLimit(requests_per_minute=1, tokens_per_minute=1)
    emitted = {
        kind
        for unit in ("requests", "tokens")
        for kind, _, _ in budgets_for(full, full, "key", "127.0.0.1", unit)
    }
    assert listed == emitted, (listed, emitted)
