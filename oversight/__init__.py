"""oversight: a lab bench for scalable-oversight research.

The public surface a protocol author needs: `protocol`, `Episode`, `Agent`, `Verdict`,
`Item`, and the assignment schedules. Names resolve on first use, so `oversight --help`
and other light commands do not pay for pydantic, Jinja2 and the engine.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "protocol": "api.registry", "ProtocolDef": "api.registry",
    "Episode": "api.episode", "Agent": "api.episode", "Message": "api.episode",
    "DISPOSITIONS": "api.episode",
    "Verdict": "api.decisions", "parse_verdict": "api.decisions", "Decision": "api.decisions",
    "Decisions": "api.decisions", "Answer": "api.decisions", "Flag": "api.decisions",
    "Score": "api.decisions", "Label": "api.decisions",
    "Item": "tasks.items", "load_dataset": "tasks.items", "load_jsonl": "tasks.items",
    "Assignment": "api.treatments", "judge_only": "api.treatments", "single_advocate": "api.treatments",
    "two_sided": "api.treatments",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'oversight' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:  # for type checkers and editors
    from .api.decisions import (  # noqa: F401
        Answer,
        Decision,
        Decisions,
        Flag,
        Label,
        Score,
        Verdict,
        parse_verdict,
    )
    from .api.episode import DISPOSITIONS, Agent, Episode, Message  # noqa: F401
    from .api.registry import ProtocolDef, protocol  # noqa: F401
    from .api.treatments import Assignment, judge_only, single_advocate, two_sided  # noqa: F401
    from .tasks.items import Item, load_dataset, load_jsonl  # noqa: F401
