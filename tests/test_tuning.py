"""oversight.tuning: the collector's state around start-up imports and the batch."""

from __future__ import annotations

import gc

from oversight.tuning import paused_gc


def test_paused_gc_pauses_then_restores_the_collector_and_freezes_what_exists():
    assert gc.isenabled()
    try:
        with paused_gc():
            assert not gc.isenabled()
            made = [[] for _ in range(10)]
        assert gc.isenabled()
        assert gc.get_freeze_count() >= len(made)
        gc.disable()  # a collector that was off stays off
        with paused_gc():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
        gc.unfreeze()
