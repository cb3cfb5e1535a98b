"""Every spec shipped in runs/ loads and passes the pre-flight (templates rendered, protocols
tried against stand-in models) without a model call: the examples stay runnable."""

from __future__ import annotations

from pathlib import Path

import pytest

from oversight.api.plugins import load_all
from oversight.batch.preflight import preflight
from oversight.batch.spec import load_spec

RUNS = Path(__file__).resolve().parents[1] / "runs"


@pytest.mark.parametrize("spec", sorted(p.name for p in RUNS.glob("*.toml")))
def test_shipped_spec_loads_and_passes_the_preflight(spec, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-not-a-real-key")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-not-a-real-key")
    registry, prompts = load_all()
    loaded = load_spec(RUNS / spec, registry, limit=2, prompts=prompts)
    assert loaded.plans and loaded.code is not None
    preflight(loaded, prompts)
