"""dsbatch: run a HuggingFace Dataset through the Anthropic Message Batches API like Dataset.map."""

from typing import TYPE_CHECKING, Any

from dsbatch._errors import (
    BatchAPIError,
    DsbatchError,
    LedgerError,
    PromptError,
    RequestTooLargeError,
    RowFailedError,
)
from dsbatch._poll import PollSchedule

if TYPE_CHECKING:
    from dsbatch._map import map

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


def __getattr__(name: str) -> Any:
    # `map` is loaded on first use, so `dsbatch emulator` and `dsbatch.testing` start without
    # importing datasets and the SDK (about a second).
    if name == "map":
        from dsbatch._map import map

        globals()["map"] = map
        return map
    raise AttributeError(f"module 'dsbatch' has no attribute {name!r}")
