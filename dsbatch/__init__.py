"""dsbatch: run a HuggingFace Dataset through the Anthropic Message Batches API like Dataset.map."""

from dsbatch._errors import (
    BatchAPIError,
    DsbatchError,
    LedgerError,
    PromptError,
    RequestTooLargeError,
    RowFailedError,
)
from dsbatch._map import map
from dsbatch._poll import PollSchedule

__version__ = "0.1.0.dev0"

__all__ = [
    "BatchAPIError",
    "DsbatchError",
    "LedgerError",
    "PollSchedule",
    "PromptError",
    "RequestTooLargeError",
    "RowFailedError",
    "__version__",
    "map",
]
