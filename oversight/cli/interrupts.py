"""Ctrl-C and SIGTERM stop a batch the same way: once, cleanly, however often they come.

The first SIGINT or SIGTERM cancels the batch, whose own clean-up then keeps what finished,
marks the episodes in flight for redo and settles the run's status. Later signals are
reported and ignored, so a second Ctrl-C (or a scheduler's SIGTERM after a Ctrl-C) cannot
cut that clean-up short. (kill -9 cannot be caught; leases make it safe anyway.)
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any, Awaitable, Callable

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def run_until_signal(make: Callable[[], Awaitable[Any]],
                     notice: Callable[[bool, str], None]) -> tuple[Any, str | None]:
    """asyncio.run(make()) -> (its result, None), or (None, "SIGINT"/"SIGTERM") when a signal
    stopped it. `notice(first, name)` is told of every signal as it arrives."""
    caught: list[str] = []

    async def main() -> Any:
        loop, task = asyncio.get_running_loop(), asyncio.current_task()

        def on_signal(sig: signal.Signals) -> None:
            notice(not caught, sig.name)
            if not caught:
                caught.append(sig.name)
                task.cancel()

        for sig in SIGNALS:
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            return await make()
        finally:
            for sig in SIGNALS:
                loop.remove_signal_handler(sig)
                if caught:  # stopping already: more signals must not cut the exit short
                    signal.signal(sig, signal.SIG_IGN)

    try:
        return asyncio.run(main()), None
    except asyncio.CancelledError:
        if caught:
            return None, caught[0]
        raise
    except KeyboardInterrupt:  # before the handlers were in place
        return None, "SIGINT"
