"""Process tuning shared by the batch runner and the exports."""

from __future__ import annotations

import contextlib
import gc


@contextlib.contextmanager
def quiet_gc():
    """Run the cyclic garbage collector rarely for the duration: freeze what exists (it lives
    until exit anyway) and collect the youngest generation every 50,000 allocations instead
    of 700. With the default thresholds a 2,000-call batch ran ~850 collections, each walking
    the ~1,000 classes the SDKs define (~15% of its CPU; ~4% after), and an export of millions
    of tuples spent ~12% of its CPU in them (bench/RESULTS.md). Cycles are still collected,
    only less often."""
    threshold = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()


@contextlib.contextmanager
def paused_gc():
    """No cyclic collection for the duration, then freeze what exists: for start-up imports,
    which make long-lived objects and next to no garbage, yet trigger full passes over them
    (~15% of `import openai`). The freeze spares the next collections that walk; quiet_gc
    unfreezes at the batch's end (bench/RESULTS.md, session 5b)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was:
            gc.enable()
