"""Hypothesis strategies and settings shared by the property tests (the request routes,
MiniLM's tokenizer, the GGUF tokenizer)."""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

PROPERTY = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
"""Bounded examples and no per-example deadline: a loaded machine makes the run slower,
never flaky."""

# Text as JSON can carry it: any code point, lone surrogates included (hypothesis' text()
# leaves out the surrogate category by default).
_surrogate = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
_chunk = st.one_of(st.text(max_size=12), _surrogate.map(str), st.text(_surrogate, max_size=3))
json_text = st.lists(_chunk, max_size=4).map("".join)

policies = st.sampled_from(["right", "left", "refuse"])
"""The truncation policies."""
