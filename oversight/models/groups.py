"""Call groups: calls that are given up together (the simultaneous turns of one episode).

The models layer knows nothing of episodes; it only honours the group a call is made in.
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar

from ..errors import ModelError


class CallGroup:
    """Calls given up together (say, the simultaneous turns of one episode).

    Once the group or its `parent` is abandoned, a call made under it (see `call_group`)
    sends no further request: it raises ModelError(kind="abandoned"). Attempts already in
    flight may finish; `in_flight` holds the tasks inside a provider call right now.
    """

    def __init__(self, parent: CallGroup | None = None):
        self.parent = parent
        self.in_flight: set[asyncio.Task] = set()
        self._reason: str | None = None

    def abandon(self, reason: str) -> None:
        if self._reason is None:
            self._reason = reason

    @property
    def abandoned(self) -> str | None:
        """Why this group (or an ancestor) was abandoned; None while it is live."""
        if self._reason is not None:
            return self._reason
        return self.parent.abandoned if self.parent is not None else None


# The group the current task's model calls belong to (a task inherits it from its creator).
call_group: ContextVar[CallGroup | None] = ContextVar("call_group", default=None)


def check_group() -> None:
    group = call_group.get()
    if group is not None and (reason := group.abandoned) is not None:
        raise ModelError(f"abandoned: {reason}", kind="abandoned", retryable=False)
