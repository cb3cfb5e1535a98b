"""Provider batch APIs as a mode of the one `complete()` interface (`batch = true`).

batcher.py gathers calls across episodes into durable batch jobs; openai_batches.py and
anthropic_batches.py speak each provider's batch API through its SDK; api.py holds what they
share and the journal protocol the store implements (store/batches.py).
"""

from .api import BatchAPI, BatchState, Journal, Submitted
from .batcher import Batcher, Outcome, batcher_for

__all__ = ["BatchAPI", "BatchState", "Batcher", "Journal", "Outcome", "Submitted", "batcher_for"]
