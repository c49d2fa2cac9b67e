"""metrics.py: injected registries, the rate-limit hook, multiprocess aggregation."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from embedhost.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def test_each_instance_has_its_own_registry() -> None:
    a, b = Metrics(version="1"), Metrics(version="1")  # no duplicate-registration error
    a.rate_limited("key1", "tokens")
    a.rate_limited(None)
    got_a = samples(a.render(None)[0].decode())
    got_b = samples(b.render(None)[0].decode())
    key = (
        "embedhost_rate_limited_requests_total",
        frozenset({"key_id": "key1", "limit": "tokens"}.items()),
    )
    assert got_a[key] == 1
    anon = (
        "embedhost_rate_limited_requests_total",
        frozenset({"key_id": "anonymous", "limit": "requests"}.items()),
    )
    assert got_a[anon] == 1
    assert key not in got_b
    # Nothing on the process-global default registry.
    assert (
        REGISTRY.get_sample_value(
            "embedhost_rate_limited_requests_total", {"key_id": "key1", "limit": "tokens"}
        )
        is None
    )


def test_every_name_is_prefixed_and_counters_end_in_total() -> None:
    m = Metrics(version="1")
    text = m.render(None)[0].decode()
    for family in text_string_to_metric_families(text):
        if family.name.startswith(("process_", "python_")):
            continue
        assert family.name.startswith("embedhost_"), family.name
    # The parser drops a counter's _total from its family name: read the exposition's own
    # TYPE lines, which name each counter as scrapers see it.
    types = [line.split()[2:4] for line in text.splitlines() if line.startswith("# TYPE ")]
    counters = [name for name, kind in types if kind == "counter"]
    assert "embedhost_requests_total" in counters and len(counters) >= 5, types
    for name in counters:
        assert name.endswith("_total"), name


def test_multiprocess_mode_aggregates_processes(tmp_path: Path) -> None:
    """Two processes count into PROMETHEUS_MULTIPROC_DIR; a third exposes the sum."""
    mpdir = tmp_path / "prom"
    mpdir.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(mpdir), "PYTHONPATH": str(ROOT / "src")}
    count = textwrap.dedent(
        """
        from embedhost.metrics import Metrics
        m = Metrics(version="1")
        m.input_tokens.labels("minilm", "k").inc(5)
        m.in_flight.inc()
        """
    )
    for _ in range(2):
        subprocess.run([sys.executable, "-c", count], env=env, check=True, timeout=60)
    show = textwrap.dedent(
        """
        import sys
        from embedhost.metrics import Metrics
        m = Metrics(version="9.9")
        sys.stdout.write(m.render(None)[0].decode())
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", show],
        env=env,
        check=True,
        timeout=60,
        capture_output=True,
        text=True,
    ).stdout
    got = samples(out)
    assert (
        got[("embedhost_input_tokens_total", frozenset({"model": "minilm", "key_id": "k"}.items()))]
        == 10
    )
    # Build info comes from the process that answers.
    assert (
        "embedhost_build_info",
        frozenset(
            {
                "version": "9.9",
                "python": sys.version.split()[0],
                "implementation": "CPython",
            }.items()
        ),
    ) in got
