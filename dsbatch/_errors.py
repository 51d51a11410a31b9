"""Every exception dsbatch raises on purpose.

The tree::

    DsbatchError                  anything dsbatch raises on purpose
    ├── BatchAPIError             the Batches API failed us (carries batch_id, status_code,
    │                             retry_after)
    ├── BudgetExceededError       what is still to send may cost more than budget_usd: nothing
    │                             was sent (carries budget_usd, cost_usd_max, plan)
    ├── LedgerError               the cache directory is unusable or inconsistent (carries path)
    ├── PromptError               a row could not become a request (carries row index, split)
    │   └── RequestTooLargeError  one request is over the batch byte limit on its own
    └── RowFailedError            on_error="raise" and some rows failed (no answer, or an
                                  answer that did not parse)

Bad arguments to a dsbatch function raise plain ``ValueError`` / ``TypeError``: that is misuse of
the library, not something that went wrong with a job.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "BatchAPIError",
    "BudgetExceededError",
    "DsbatchError",
    "LedgerError",
    "PromptError",
    "RequestTooLargeError",
    "RowFailedError",
]


class DsbatchError(Exception):
    """Base class of every error dsbatch raises on purpose."""


class BatchAPIError(DsbatchError):
    """A call to the Message Batches API failed, or answered something we cannot use."""

    def __init__(
        self,
        message: str,
        *,
        batch_id: str | None = None,
        status_code: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.batch_id = batch_id
        self.status_code = status_code
        # Seconds the server asked us to wait before trying again (a 429's retry-after).
        self.retry_after = retry_after


class BudgetExceededError(DsbatchError):
    """What a call still has to send may cost more than its ``budget_usd``; nothing was sent.
    ``cost_usd_max`` is None when a model's price is not known (the budget cannot be checked)."""

    def __init__(
        self,
        message: str,
        *,
        budget_usd: float,
        cost_usd_max: float | None,
        plan: Any = None,
    ) -> None:
        super().__init__(message)
        self.budget_usd = budget_usd
        self.cost_usd_max = cost_usd_max
        self.plan = plan  # the dsbatch.Plan the figures come from


class LedgerError(DsbatchError):
    """The cache directory cannot be read or written, or holds something we cannot trust."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class PromptError(DsbatchError):
    """A row could not be turned into a valid Messages request."""

    def __init__(self, message: str, *, row: int | None = None, split: str | None = None) -> None:
        where = _where(row, split)
        super().__init__(f"{where}: {message}" if where else message)
        self.row = row
        self.split = split


class RequestTooLargeError(PromptError):
    """A single request is larger than a whole batch may be."""


class RowFailedError(DsbatchError):
    """Some rows failed (errored, expired or canceled: no answer; parse_error: an answer, paid
    for, that did not parse) and ``on_error="raise"`` was asked for."""

    def __init__(
        self,
        message: str,
        *,
        rows: Sequence[int] = (),
        custom_ids: Sequence[str] = (),
        by_split: Mapping[str, Sequence[int]] | None = None,
    ) -> None:
        super().__init__(message)
        # The failed rows (of the first failing split of a DatasetDict), their custom_ids (all
        # splits), and split -> failed rows.
        self.rows = list(rows)
        self.custom_ids = list(custom_ids)
        self.by_split = {split: list(r) for split, r in (by_split or {}).items()}


def _where(row: int | None, split: str | None) -> str:
    if row is None:
        return ""
    return f"row {row}" + (f" of split {split!r}" if split else "")
