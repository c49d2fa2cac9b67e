"""Ray's token authentication for the cluster these tests start, with a token of this run's
own: set before anything imports ray (Ray reads its mode once per process), so that a
token file left in ~/.ray by another cluster (Ray writes one for every local ``ray.init``)
neither blocks this one nor is reused by it."""

from __future__ import annotations

import os
import secrets

os.environ["RAY_AUTH_MODE"] = "token"
os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
