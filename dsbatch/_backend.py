"""The backend: the only module that talks to the Anthropic SDK.

Every call goes through the official ``anthropic`` client. ``create`` runs with the SDK's retries
off: the API has no idempotency key, so a retried create whose first answer was lost would be a
second, billed batch. The caller reconciles with ``recent`` instead.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import xxhash
from anthropic.types.messages import MessageBatch

from dsbatch._errors import BatchAPIError

__all__ = [
    "Backend",
    "BatchInfo",
    "CreateOutcomeUnknown",
    "RateLimited",
    "is_transient",
    "key_hash",
]

_COUNT_FIELDS = ("processing", "succeeded", "errored", "canceled", "expired")


class CreateOutcomeUnknown(Exception):
    """A create may or may not have reached the API (its answer was lost)."""


class RateLimited(Exception):
    """A create was refused with 429: nothing was created; try again after ``retry_after``."""

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class BatchInfo:
    """The fields of a MessageBatch that dsbatch uses."""

    id: str
    processing_status: str
    counts: dict[str, int]
    created_at: float
    expires_at: float | None
    ended_at: float | None
    results_url: str | None

    @property
    def ended(self) -> bool:
        return self.processing_status == "ended"

    @property
    def size(self) -> int:
        return sum(self.counts.values())

    @classmethod
    def from_sdk(cls, batch: MessageBatch) -> BatchInfo:
        counts = batch.request_counts
        return cls(
            id=batch.id,
            processing_status=batch.processing_status,
            counts={name: int(getattr(counts, name)) for name in _COUNT_FIELDS},
            created_at=_ts(batch.created_at) or 0.0,
            expires_at=_ts(batch.expires_at),
            ended_at=_ts(batch.ended_at),
            results_url=batch.results_url,
        )


def _ts(value: dt.datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def is_transient(error: BatchAPIError) -> bool:
    """A failure worth waiting out: no connection, rate limited, or the server's fault."""
    status = error.status_code
    return status is None or status == 429 or status >= 500


def key_hash(api_key: str | None) -> str:
    """A short, one-way hash of the API key: enough to tell keys apart, useless to an attacker."""
    if not api_key:
        return ""
    return xxhash.xxh3_64_hexdigest(api_key.encode())[:12]


def _api_error(action: str, e: anthropic.APIError, batch_id: str | None = None) -> BatchAPIError:
    status = getattr(e, "status_code", None)
    where = f" {batch_id}" if batch_id else ""
    hint = ""
    if status == 401:
        hint = " (check ANTHROPIC_API_KEY or the client's api_key)"
    elif status == 404 and batch_id:
        hint = " (the batch does not exist for this key and workspace)"
    message = getattr(e, "message", None) or str(e)
    return BatchAPIError(
        f"{action}{where} failed{f' with HTTP {status}' if status else ''}: {message}{hint}",
        batch_id=batch_id,
        status_code=status,
    )


class Backend:
    """Batch calls over one ``anthropic.Anthropic`` client."""

    def __init__(self, client: anthropic.Anthropic | None = None) -> None:
        if client is not None and not isinstance(client, anthropic.Anthropic):
            kind = type(client).__name__
            hint = " (dsbatch needs the synchronous client)" if "Async" in kind else ""
            raise TypeError(f"client must be an anthropic.Anthropic, not {kind}{hint}")
        # Built on first use: a job whose answers are all cached needs no key at all.
        self._client = client
        self._no_retry_client: anthropic.Anthropic | None = None

    @property
    def client(self) -> anthropic.Anthropic:
        if self._client is None:
            # The SDK finds credentials in the environment or in an Anthropic profile.
            missing = BatchAPIError(
                "no Anthropic credentials: set ANTHROPIC_API_KEY (or configure an Anthropic "
                "profile), or pass client=anthropic.Anthropic(...)"
            )
            try:
                client = anthropic.Anthropic()
            except anthropic.AnthropicError as e:
                raise missing from e
            if not any(getattr(client, a, None) for a in ("api_key", "auth_token", "credentials")):
                raise missing
            self._client = client
        return self._client

    @property
    def _no_retry(self) -> anthropic.Anthropic:
        if self._no_retry_client is None:
            self._no_retry_client = self.client.with_options(max_retries=0)
        return self._no_retry_client

    @property
    def key_hash(self) -> str:
        client = self.client
        return key_hash(getattr(client, "api_key", None) or getattr(client, "auth_token", None))

    def create(self, body: bytes) -> BatchInfo:
        """Create one batch from a ready JSON body ``{"requests": [...]}``.

        Raises ``CreateOutcomeUnknown`` when the batch may exist although no answer came back.
        """
        try:
            batch = self._no_retry.post(
                "/v1/messages/batches",
                cast_to=MessageBatch,
                content=body,
                options={"headers": {"Content-Type": "application/json"}},
            )
        except (anthropic.APIConnectionError, anthropic.InternalServerError) as e:
            # A lost connection, a timeout or a 5xx: the batch may have been created anyway.
            raise CreateOutcomeUnknown(str(e)) from e
        except anthropic.RateLimitError as e:
            raise RateLimited(str(e), _retry_after(e.response.headers)) from e
        except anthropic.APIStatusError as e:
            raise _api_error("creating a batch", e) from e
        return BatchInfo.from_sdk(batch)

    def retrieve(self, batch_id: str) -> BatchInfo:
        try:
            return BatchInfo.from_sdk(self.client.messages.batches.retrieve(batch_id))
        except anthropic.APIError as e:
            raise _api_error("retrieving batch", e, batch_id) from e

    def recent(self, limit: int = 100) -> list[BatchInfo]:
        """The newest batches of this key's workspace, newest first."""
        try:
            page = self.client.messages.batches.list(limit=limit)
            return [BatchInfo.from_sdk(b) for b in page.data]
        except anthropic.APIError as e:
            raise _api_error("listing batches", e) from e

    def cancel(self, batch_id: str) -> BatchInfo:
        try:
            return BatchInfo.from_sdk(self.client.messages.batches.cancel(batch_id))
        except anthropic.APIError as e:
            raise _api_error("canceling batch", e, batch_id) from e

    def download(self, batch: BatchInfo) -> Iterator[bytes]:
        """The raw bytes of a batch's results, streamed; raises if the download is cut short."""
        if not batch.results_url:
            raise BatchAPIError(
                f"batch {batch.id} has no results_url (status {batch.processing_status})",
                batch_id=batch.id,
            )
        try:
            results = self.client.messages.batches.with_streaming_response.results(batch.id)
            with results as response:
                yield from response.iter_bytes()
        except anthropic.APIStatusError as e:
            raise _api_error("downloading the results of batch", e, batch.id) from e
        except Exception as e:
            # httpx2 reports a cut body as its own protocol error: wrap whatever it raises.
            raise BatchAPIError(
                f"downloading results for batch {batch.id} was cut off: {e}", batch_id=batch.id
            ) from e


def _retry_after(headers: Any) -> float | None:
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        try:
            return float(headers.get(name)) / scale
        except (TypeError, ValueError):
            continue
    return None
