"""The API keys printed in this repository (deploy/.env.example and the Kubernetes example
overlay): their hashes, so that ``serve`` refuses them where it matters.

Anyone can read these keys, so a production server that admits one is open to everyone.
:func:`published_example_keys` names the configured entries that carry one of these
hashes; :func:`embedhost.security.admission.serve_time_problems` refuses to start with any
of them when ``environment`` is ``production`` (development keeps them, for trying the
examples on a laptop).
"""

from __future__ import annotations

from collections.abc import Iterable

from embedhost.config import ApiKeyConfig

# sha256 of "eh-example-app-CHANGE-ME" and "eh-example-metrics-CHANGE-ME".
PUBLISHED_EXAMPLE_HASHES = frozenset(
    {
        "sha256:e419214ab75ab6673f0412095a8252749c4091266be5efe54eb054e2a5579497",
        "sha256:5a38471e447135b93c2da922b723bf77c4e968539dcdbcec79495ff5c00d23d6",
    }
)


def published_example_keys(keys: Iterable[ApiKeyConfig]) -> list[str]:
    """The ids of the live (not revoked) entries whose hash is a published example's."""
    return [k.id for k in keys if not k.revoked and k.hash.lower() in PUBLISHED_EXAMPLE_HASHES]
