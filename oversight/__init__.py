"""oversight: a lab bench for scalable-oversight research.

The public surface a protocol author needs: `protocol`, `Episode`, `Agent`, `Verdict`,
`Item`, and the assignment schedules.
"""

from .assign import Assignment, judge_only, single_advocate, two_sided
from .episode import DISPOSITIONS, Agent, Episode, Message
from .items import Item, load_dataset, load_jsonl
from .protocol import ProtocolDef, protocol
from .verdict import Verdict, parse_verdict

__version__ = "0.1.0"

__all__ = ["protocol", "Episode", "Agent", "Message", "Verdict", "parse_verdict", "Item",
           "load_dataset", "load_jsonl", "Assignment", "judge_only", "single_advocate",
           "two_sided", "ProtocolDef", "DISPOSITIONS", "__version__"]
