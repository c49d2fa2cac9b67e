"""One model name: every version loaded under it, the current one, and how unpinned
traffic is split between them (A/B weights, a shadow). The registry
(:mod:`embedhost.models.registry`) owns every change to a group; a group answers which
version serves a caller (:meth:`ModelGroup.choose`) and describes itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from embedhost.models import router
from embedhost.models.version import ModelVersion, VersionState


@dataclass(slots=True)
class ModelGroup:
    """Every version of one model name, and how unpinned traffic is split between them."""

    name: str
    current: str
    versions: dict[str, ModelVersion] = field(default_factory=dict)
    history: list[str] = field(default_factory=list)
    weights: dict[str, float] = field(default_factory=dict)
    shadow: str | None = None
    shadow_rate: float = 1.0

    @property
    def current_handle(self) -> ModelVersion:
        return self.versions[self.current]

    def choose(self, key: str | None) -> ModelVersion:
        """The version for an unpinned request: the caller's A/B slice if it is ready,
        else the current version."""
        if self.weights and key is not None:
            version = router.choose(self.name, key, self.weights)
            handle = self.versions.get(version) if version else None
            if handle is not None and handle.state is VersionState.READY:
                return handle
        return self.current_handle

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "current": self.current,
            "previous": self.history[-1] if self.history else None,
            "traffic": dict(self.weights),
            "shadow": {"version": self.shadow, "sample_rate": self.shadow_rate}
            if self.shadow
            else None,
            "versions": [h.describe() for h in self.versions.values()],
        }
