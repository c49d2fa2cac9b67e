"""The Batch API's metrics, read at scrape time: jobs by status, lines finished, and the
share of the engines' sequences that came from the batch lane (:mod:`embedhost.lanes`).

A collector on the app's registry (``Metrics.local``): the store's counts when it is open
(a scrape never creates a data directory), the runner's line counters, the replicas'
sequence counters.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from embedhost.jobs.runner import Jobs
from embedhost.jobs.store import STATUSES


class JobsCollector(Collector):
    def __init__(self, jobs: Jobs) -> None:
        self.jobs = jobs

    def collect(self) -> Iterable[Metric]:
        by_status = GaugeMetricFamily(
            "embedhost_batch_jobs", "Batch API jobs by status", labels=["status"]
        )
        store = self.jobs.peek_store()
        counts = store.count_by_status() if store is not None else {}
        for status in STATUSES:
            by_status.add_metric([status], counts.get(status, 0))
        yield by_status
        lines = CounterMetricFamily(
            "embedhost_batch_lines",
            "Batch API lines finished by this process, by result",
            labels=["result"],
        )
        for result, n in self.jobs.lines.items():
            lines.add_metric([result], n)
        yield lines
        yield GaugeMetricFamily(
            "embedhost_batch_lines_waiting",
            "Batch API lines refused for now (token budget spent, batch lane full) that "
            "wait to be retried: a job over its budget pauses",
            value=self.jobs.waiting,
        )
        share = GaugeMetricFamily(
            "embedhost_batch_lane_share",
            "Share of the sequences sent to the engines that came from the batch lane",
            labels=["model", "version"],
        )
        registry = self.jobs.registry
        if registry is not None:
            totals: dict[tuple[str, str], list[int]] = {}
            for h, r in registry.replica_loads():
                t = totals.setdefault((h.name, h.version), [0, 0])
                t[0] += r.sequences
                t[1] += r.batch_sequences
            for (name, version), (seqs, bulk) in totals.items():
                share.add_metric([name, version], bulk / seqs if seqs else 0.0)
        yield share
