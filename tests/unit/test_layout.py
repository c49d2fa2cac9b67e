"""The house rules that import-linter cannot check, read off the source tree: the app's
one state attribute, no module past the size where one job fits, engines named only by
the catalog, no object reaching into a replica's parts, tests that share helpers through
``tests/support`` rather than through each other."""

from __future__ import annotations

import re
from pathlib import Path

from tests.support import ROOT

SRC = ROOT / "src" / "embedhost"
MAX_LINES = 500


def _py(base: Path) -> list[Path]:
    return sorted(p for p in base.rglob("*.py") if "__pycache__" not in p.parts)


def _hits(paths: list[Path], pattern: re.Pattern[str]) -> list[str]:
    out = []
    for p in paths:
        for n, line in enumerate(p.read_text().splitlines(), 1):
            if pattern.search(line):
                out.append(f"{p.relative_to(ROOT)}:{n}: {line.strip()}")
    return out


def test_the_app_keeps_one_state_attribute() -> None:
    """Everything the HTTP layer shares is the one typed context (api/context.py)."""
    hits = _hits(_py(SRC), re.compile(r"\.state\.(?!context\b)\w+"))
    # A version's state (handle.state, replica.state ...) is not the app's.
    app_state = [h for h in hits if re.search(r"\b(app|a)\.state\.", h)]
    assert app_state == []
    assert _hits(_py(SRC), re.compile(r"\bapp\.state\.context\b")) != []


def test_no_module_past_the_size_of_one_job() -> None:
    """config.py is the one exception: the settings schema, one section after another."""
    too_long = [
        f"{p.relative_to(ROOT)}: {n} lines"
        for p in _py(SRC) + _py(ROOT / "bench") + _py(ROOT / "tests")
        if (n := len(p.read_text().splitlines())) > MAX_LINES and p != SRC / "config.py"
    ]
    assert too_long == []


def test_nothing_reaches_into_a_replica() -> None:
    """A replica (models/replica.py) owns its worker and batcher and answers for them."""
    reach = re.compile(r"\b(?!settings\b)(?!embedhost\b)\w+\.(worker|batcher)\b")
    hits = [
        h for h in _hits(_py(SRC), reach) if not h.startswith("src/embedhost/models/replica.py")
    ]
    assert hits == []


def test_tests_share_helpers_through_support() -> None:
    """Test modules import shared helpers from tests/support, never from each other or
    from a conftest.py (fixtures reach them through pytest, not imports)."""
    other_test = re.compile(r"^\s*(from|import) tests(\.\w+)*\.(test_\w+|conftest)\b")
    assert _hits(_py(ROOT / "tests") + _py(ROOT / "bench"), other_test) == []
    bench_to_bench = re.compile(r"^\s*(from|import) (bench\.)?(throughput|storm|fairness)\b")
    assert _hits(_py(ROOT / "bench"), bench_to_bench) == []
