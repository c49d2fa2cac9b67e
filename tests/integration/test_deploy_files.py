"""deploy/prometheus and deploy/grafana: valid for promtool and Grafana, and every query
names a metric that embedhost exports."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from tests.support import ROOT
from tests.support.deploy import exported_names, promtool

PROM = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "embedhost.json"
_NAME = re.compile(r"\b((?:embedhost|process)_[a-z0-9_]+)\b")


def test_promtool_check_config(tmp_path: Path) -> None:
    for f in ("prometheus.yml", "alerts.yml", "scaling.yml"):
        shutil.copy(PROM / f, tmp_path / f)
    # The scrape config reads the metrics API key from this file; promtool checks it exists.
    (tmp_path / "embedhost-metrics.key").write_text("key-with-metrics-scope\n")
    out = promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert "SUCCESS" in out


def test_promtool_check_and_test_rules() -> None:
    out = promtool("check", "rules", "alerts.yml", cwd=PROM)
    assert "SUCCESS" in out
    promtool("test", "rules", "alerts_test.yml", cwd=PROM)


def test_alerts_cover_the_issue() -> None:
    rules = yaml.safe_load((PROM / "alerts.yml").read_text())["groups"][0]["rules"]
    names = {r["alert"] for r in rules}
    assert {
        "EmbedhostHighErrorRatio",
        "EmbedhostHighLatencyP99",
        "EmbedhostQueueSaturated",
        "EmbedhostWorkerRestarts",
        "EmbedhostNotReady",
        "EmbedhostRateLimitStorageErrors",
        "EmbedhostTargetAbsent",
    } <= names


def _exprs() -> list[tuple[str, str]]:
    out = [
        (f"alert {r['alert']}", r["expr"])
        for r in yaml.safe_load((PROM / "alerts.yml").read_text())["groups"][0]["rules"]
    ]
    dash = json.loads(DASHBOARD.read_text())
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            out.append((f"panel {panel['title']!r}", target["expr"]))
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            out.append((f"variable {var['name']}", var["definition"]))
    return out


@pytest.mark.parametrize(("where", "expr"), _exprs())
def test_queries_name_exported_metrics(where: str, expr: str) -> None:
    used = set(_NAME.findall(expr))
    # `up` is Prometheus' own series for the scrape.
    assert used or re.search(r"\bup\{", expr), f"{where}: no embedhost metric in {expr!r}"
    missing = used - exported_names()
    assert not missing, f"{where}: {sorted(missing)} are not exported"


def test_dashboard_shape() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "embedhost"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24
