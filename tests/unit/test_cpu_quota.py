"""The CPU budget under a container's quota (issue 24, item 3): cgroup v2 ``cpu.max``, v1
``cpu.cfs_quota_us`` and OMP_NUM_THREADS cap the cores the budget splits."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedhost.config import ModelConfig
from embedhost.worker import budget
from embedhost.worker.budget import cgroup_cpu_quota, omp_threads, thread_budget, usable_cores


def test_cgroup_v2(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("200000 100000\n")
    assert cgroup_cpu_quota(str(tmp_path)) == 2.0
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_quota(str(tmp_path)) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(str(tmp_path)) is None


def test_cgroup_v1(tmp_path: Path) -> None:
    cpu = tmp_path / "cpu,cpuacct"
    cpu.mkdir()
    (cpu / "cpu.cfs_quota_us").write_text("300000\n")
    (cpu / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(str(tmp_path)) == 3.0
    (cpu / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_quota(str(tmp_path)) is None
    assert cgroup_cpu_quota(str(tmp_path / "none")) is None


def test_omp_threads() -> None:
    assert omp_threads({"OMP_NUM_THREADS": "3"}) == 3
    assert omp_threads({"OMP_NUM_THREADS": "4,2"}) == 4  # nested levels: the outer one
    assert omp_threads({"OMP_NUM_THREADS": "0"}) is None
    assert omp_threads({"OMP_NUM_THREADS": "lots"}) is None
    assert omp_threads({}) is None


def _model(name: str, replicas: int = 1) -> ModelConfig:
    return ModelConfig(name=name, engine="transformers", path="/m", replicas=replicas)


def test_quota_caps_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(budget, "_affinity", lambda: 64)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(budget, "cgroup_cpu_quota", lambda root="": 1.5)
    assert usable_cores() == 2  # 1.5 CPUs: two threads, not 64
    # Two models share the quota, not the node's cores.
    b = thread_budget([_model("a"), _model("b")])
    assert b.cores == 2 and b.threads == {"a@1": 1, "b@1": 1}
    # One model alone: the quota, where the engine would otherwise take all 64 cores.
    assert thread_budget([_model("a")]).threads == {"a@1": 2}
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert usable_cores() == 1


def test_no_cap_leaves_one_model_to_its_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(budget, "_affinity", lambda: 8)
    monkeypatch.setattr(budget, "cgroup_cpu_quota", lambda root="": None)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert usable_cores() == 8
    assert thread_budget([_model("a")]).threads == {"a@1": None}
