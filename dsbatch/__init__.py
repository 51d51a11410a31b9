"""dsbatch: run a HuggingFace Dataset through the Anthropic Message Batches API like Dataset.map."""

import importlib
from typing import TYPE_CHECKING, Any

from dsbatch._errors import (
    BatchAPIError,
    BudgetExceededError,
    DsbatchError,
    LedgerError,
    PromptError,
    RequestTooLargeError,
    RowFailedError,
)
from dsbatch._poll import PollSchedule

if TYPE_CHECKING:
    from dsbatch._card import card
    from dsbatch._estimate import Plan
    from dsbatch._job import Job, jobs
    from dsbatch._map import map
    from dsbatch._preview import preview
    from dsbatch._status import BatchStatus, JobStatus

__version__ = "0.1.0.dev0"

__all__ = [
    "BatchAPIError",
    "BatchStatus",
    "BudgetExceededError",
    "DsbatchError",
    "Job",
    "JobStatus",
    "LedgerError",
    "Plan",
    "PollSchedule",
    "PromptError",
    "RequestTooLargeError",
    "RowFailedError",
    "__version__",
    "card",
    "jobs",
    "map",
    "preview",
]

# Loaded on first use, so `dsbatch emulator` and `dsbatch.testing` start without importing
# datasets and the SDK (about a second).
_LAZY = {
    "BatchStatus": "dsbatch._status",
    "Job": "dsbatch._job",
    "JobStatus": "dsbatch._status",
    "Plan": "dsbatch._estimate",
    "card": "dsbatch._card",
    "jobs": "dsbatch._job",
    "map": "dsbatch._map",
    "preview": "dsbatch._preview",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dsbatch' has no attribute {name!r}")
