"""The CPU budget: how many engine threads each model replica gets, so that the engines of
one server together do not use more threads than the cores this process may run on.

Each worker sizing its own thread pool to every core oversubscribes the machine as soon as
a server runs two of them: their threads spin-wait on each other's cores, and the engine
that spins hardest takes the CPU (issue 15: ONNX answered ~8x what transformers did with
the same senders). The budget splits the usable cores (``os.sched_getaffinity``) between
the replicas of the models that do not set their threads (usable: the process's CPU
affinity, capped by the container's CPU quota, cgroup v2 ``cpu.max`` or v1
``cpu.cfs_quota_us``, and by ``OMP_NUM_THREADS`` when set: a pod limited to 2 CPUs on a
64-core node gets 2, not 64), in proportion to each model's
``cpu_weight``, at least one thread each. An explicit ``threads`` (or the engine's own
thread option) wins, and its threads are taken out of what the others share; a warning
says when the explicit counts alone oversubscribe the cores.

One model with one replica is left to the engine's default (all usable cores) when
nothing caps the affinity; under a quota or OMP_NUM_THREADS it gets the capped count,
since engines size their pools from the affinity or the host's cores.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

from embedhost.config import ModelConfig

# engine_options that set an engine's (intra-op) threads: explicit, as ``threads`` is.
THREAD_OPTIONS = ("n_threads", "intra_op_threads")


CGROUP = "/sys/fs/cgroup"


def _affinity() -> int:
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _own_cgroup_dirs(root: str) -> list[str]:
    """This process's cgroup directories (from /proc/self/cgroup), then the root: a
    container sees its own cgroup at the root when it has a cgroup namespace, and under
    its path from /proc/self/cgroup when it shares the host's (cgroup v1, podman's
    default there)."""
    dirs: list[str] = []
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                names = controllers.split(",")
                if controllers == "":
                    dirs.append(os.path.join(root, path.lstrip("/")))
                elif "cpu" in names:
                    for sub in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
                        dirs.append(os.path.join(root, sub, path.lstrip("/")))
    except (OSError, ValueError):
        pass
    return [
        *dirs,
        root,
        *(os.path.join(root, sub) for sub in ("cpu", "cpu,cpuacct", "cpuacct,cpu")),
    ]


def _read_quota(d: str) -> tuple[bool, float | None]:
    """(found, CPUs) for one cgroup directory: v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``."""
    try:
        with open(os.path.join(d, "cpu.max")) as f:
            quota, _, period = f.read().strip().partition(" ")
        if quota != "max" and float(period or 100000) > 0:
            return True, float(quota) / float(period or 100000)
        return True, None
    except (OSError, ValueError):
        pass
    try:
        with open(os.path.join(d, "cpu.cfs_quota_us")) as f:
            quota_us = int(f.read().strip())
        with open(os.path.join(d, "cpu.cfs_period_us")) as f:
            period_us = int(f.read().strip())
    except (OSError, ValueError):
        return False, None
    return True, (quota_us / period_us if quota_us > 0 and period_us > 0 else None)


def cgroup_cpu_quota(root: str = CGROUP) -> float | None:
    """CPUs allowed by this process's cgroup quota (quota / period); None when unlimited or
    unknown. cgroup v2 ``cpu.max`` ("max 100000" or "200000 100000"), v1
    ``cpu.cfs_quota_us`` (-1: none) over ``cpu.cfs_period_us``; the smallest quota found
    on the process's own cgroup or the root of the mount."""
    quotas = [q for d in _own_cgroup_dirs(root) for found, q in [_read_quota(d)] if found and q]
    return min(quotas) if quotas else None


def omp_threads(env: dict[str, str] | None = None) -> int | None:
    value = (os.environ if env is None else env).get("OMP_NUM_THREADS", "").split(",")[0]
    try:
        return int(value) if int(value) > 0 else None
    except ValueError:
        return None


def usable_cores() -> int:
    """The affinity, capped by the cgroup CPU quota (rounded up) and OMP_NUM_THREADS."""
    cores = _affinity()
    quota = cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores, max(math.ceil(quota - 1e-9), 1))
    omp = omp_threads()
    if omp is not None:
        cores = min(cores, omp)
    return cores


def explicit_threads(m: ModelConfig) -> int | None:
    for opt in THREAD_OPTIONS:
        if opt in m.engine_options:
            return int(m.engine_options[opt])
    return m.threads


@dataclass(frozen=True, slots=True)
class Budget:
    cores: int
    threads: dict[str, int | None]
    """Threads per replica, by model ref (None: the engine's own default)."""
    explicit: dict[str, int]
    """The models whose threads are set in their config, by ref."""

    def oversubscribed(self, models: Sequence[ModelConfig]) -> str | None:
        """A warning when explicit thread counts alone exceed the cores, else None."""
        total = sum(self.explicit[m.ref] * m.replicas for m in models if m.ref in self.explicit)
        if total <= self.cores:
            return None
        parts = ", ".join(
            f"{m.ref}: {self.explicit[m.ref]} x {m.replicas}"
            for m in models
            if m.ref in self.explicit
        )
        return (
            f"explicit engine threads add up to {total} ({parts}), more than the {self.cores} "
            "usable cores: the engines will oversubscribe the CPU and slow each other down; "
            "lower `threads` or leave it unset to share the cores"
        )


def thread_budget(models: Sequence[ModelConfig], cores: int | None = None) -> Budget:
    """Threads per replica for each model of one server."""
    capped = cores is None and usable_cores() < _affinity()
    cores = usable_cores() if cores is None else cores
    explicit = {m.ref: t for m in models if (t := explicit_threads(m)) is not None}
    shared = [m for m in models if m.ref not in explicit]
    threads: dict[str, int | None] = dict.fromkeys(explicit)
    if len(shared) == 1 and shared[0].replicas == 1 and not explicit:
        # Nothing to share: the engine's default, unless a quota caps what it would take.
        threads[shared[0].ref] = cores if capped else None
        return Budget(cores, threads, explicit)
    pool = max(cores - sum(explicit[m.ref] * m.replicas for m in models if m.ref in explicit), 0)
    total_weight = sum(m.cpu_weight * m.replicas for m in shared)
    # Whole threads by the largest remainder: each model's exact share of the pool, per
    # replica, floored; then one more thread per replica, in order of the largest part
    # left over, while whole cores remain for all of its replicas.
    exact = {m.ref: pool * m.cpu_weight / total_weight for m in shared} if shared else {}
    given = {ref: int(share) for ref, share in exact.items()}
    left = pool - sum(given[m.ref] * m.replicas for m in shared)
    for m in sorted(shared, key=lambda m: exact[m.ref] - given[m.ref], reverse=True):
        if left >= m.replicas and exact[m.ref] - given[m.ref] > 0:
            given[m.ref] += 1
            left -= m.replicas
    for m in shared:
        threads[m.ref] = max(given[m.ref], 1)
    return Budget(cores, threads, explicit)


def describe(models: Sequence[ModelConfig], budget: Budget) -> str | None:
    """One line for the start-up log, or None when the budget decided nothing."""
    shared = [m for m in models if budget.threads.get(m.ref) is not None]
    if not shared:
        return None
    parts = ", ".join(
        f"{m.ref} {budget.threads[m.ref]} thread(s) x {m.replicas} replica(s)" for m in shared
    )
    return f"CPU budget of {budget.cores} usable cores: {parts}"
