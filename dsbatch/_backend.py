"""The backend: the only module that calls the Anthropic API, through the official ``anthropic``
client. Other modules use the SDK without calling anything: its client type (``_map``, ``_job``,
``_rerun``), its version (``_provenance``, ``_rerun``), its request types (``_sdk_schema``) and
``transform_schema`` (``_structured``).

Every call goes with the SDK's own retries off: dsbatch retries each call itself (``_retry``), on
the call's clock (``_clock``, which also measures the server's clock skew here). ``create``
above all must not be retried blindly: the API has no idempotency key, so a retried create whose
first answer was lost would be a second, billed batch. The caller reconciles with ``recent``
instead.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import anthropic
import xxhash
from anthropic.types import Message
from anthropic.types.messages import MessageBatch

from dsbatch._errors import BatchAPIError
from dsbatch._limits import API_VERSION_2026

try:  # the version the SDK sends by default (private: read it, never rely on it being there)
    from anthropic._constants import ANTHROPIC_API_VERSION
except ImportError:  # pragma: no cover - an SDK that moved it
    ANTHROPIC_API_VERSION = API_VERSION_2026

__all__ = [
    "ANTHROPIC_HEADER",
    "COUNT_TOKENS_KEYS",
    "EMULATOR_HEADER",
    "Backend",
    "BatchInfo",
    "CreateOutcomeUnknown",
    "NoCredentials",
    "Unreachable",
    "is_transient",
    "key_hash",
]

# The header every answer of the Anthropic API carries (a proxy in front of it passes it on),
# and the one every answer of dsbatch's emulator carries: what tells an origin (``_origin``).
ANTHROPIC_HEADER = "anthropic-organization-id"
EMULATOR_HEADER = "x-dsbatch-emulator"
_DEFAULT_BASE_URL = "https://api.anthropic.com"

_COUNT_FIELDS = ("processing", "succeeded", "errored", "canceled", "expired")
# What token counting takes of a request (the spec's CountMessageTokensParams, which refuses any
# other key: max_tokens, temperature, metadata, stop_sequences, service_tier...).
COUNT_TOKENS_KEYS = (
    "cache_control",
    "messages",
    "model",
    "output_config",
    "system",
    "thinking",
    "tool_choice",
    "tools",
)
# Seconds one token count may take: a dry run must not hang on a network that drops packets.
_COUNT_TIMEOUT = 30.0
# Statuses worth waiting out: timeout, conflict, rate limited; 5xx below.
_TRANSIENT = frozenset({408, 409, 429})


class NoCredentials(BatchAPIError):
    """No API key or token was found: no retry will find one."""


class CreateOutcomeUnknown(BatchAPIError):
    """A create may or may not have reached the API (no answer, or a 5xx): look before
    creating again."""


class Unreachable(BatchAPIError):
    """No connection could be made at all (refused, or the host name does not resolve): more
    likely a wrong base URL than an outage, so the first contact gives up within seconds."""


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


def is_transient(error: BaseException) -> bool:
    """A failure worth waiting out: no connection, timeout, rate limit, or the server's fault."""
    if not isinstance(error, BatchAPIError) or isinstance(error, NoCredentials):
        return False
    status = error.status_code
    return status is None or status in _TRANSIENT or status >= 500


def key_hash(api_key: str | None) -> str:
    """A short, one-way hash of the API key: enough to tell keys apart, useless to an attacker."""
    if not api_key:
        return ""
    return xxhash.xxh3_64_hexdigest(api_key.encode())[:12]


def _retry_after(headers: Any) -> float | None:
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        try:
            return float(headers.get(name)) / scale
        except (TypeError, ValueError):
            continue
    return None


def _server_time(headers: Any) -> float | None:
    """The server's clock from a response's ``Date`` header (to correct local clock skew)."""
    try:
        return email.utils.parsedate_to_datetime(headers.get("date")).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def _api_error(
    action: str,
    e: anthropic.APIError,
    batch_id: str | None = None,
    *,
    where: tuple[str, str] | None = None,
) -> BatchAPIError:
    """One message per failed call: ``<action> failed[ with HTTP n]: <why>[ (hint)]``, with no
    closing full stop (callers go on with their own sentences)."""
    status = getattr(e, "status_code", None)
    response = getattr(e, "response", None)
    at = f" {batch_id}" if batch_id else ""
    hint = ""
    if status == 401:
        hint = " (check ANTHROPIC_API_KEY or the client's api_key)"
    elif status == 404 and batch_id:
        hint = " (the batch does not exist for this key and workspace)"
    message = _clause(_said(e))
    cause = _connect_error(e)
    if cause is not None and where is not None:
        url, source = where
        return Unreachable(
            f"{action}{at} failed: cannot connect to {url} ({cause}); that base URL {source}"
        )
    return BatchAPIError(
        f"{action}{at} failed{f' with HTTP {status}' if status else ''}: {message}{hint}",
        batch_id=batch_id,
        status_code=status,
        retry_after=_retry_after(response.headers) if response is not None else None,
    )


def _said(e: anthropic.APIError) -> str:
    """What the API said: the ``error.message`` of its answer's body (the SDK's own message
    repeats the whole body), else the SDK's message."""
    body = getattr(e, "body", None)
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str) and error["message"]:
        kind = error.get("type")
        said = _clause(error["message"])
        return f"{said} ({kind})" if isinstance(kind, str) and kind else said
    return getattr(e, "message", None) or str(e)


def _clause(text: str) -> str:
    """A message as a clause of ours: without its closing full stop ("Connection error.")."""
    return text.strip().rstrip(".").rstrip() or text.strip()


def _connect_error(e: BaseException) -> str | None:
    """Why no connection could be made at all (refused, unknown host), read from the chain of
    causes the SDK keeps (its HTTP library raises ``ConnectError`` then); None for any other
    failure (a timeout, a connection cut midway)."""
    if not isinstance(e, anthropic.APIConnectionError) or isinstance(e, anthropic.APITimeoutError):
        return None
    connect = False
    deepest: BaseException = e
    seen = e.__cause__ or e.__context__
    while seen is not None:
        connect = connect or type(seen).__name__ == "ConnectError"
        deepest = seen
        seen = seen.__cause__ or seen.__context__
    return _clause(str(deepest)) or type(deepest).__name__ if connect else None


class Backend:
    """Batch calls over one ``anthropic.Anthropic`` client."""

    def __init__(
        self,
        client: anthropic.Anthropic | None = None,
        *,
        clock: Callable[[], float] = time.time,
        api_version: str | None = None,
    ) -> None:
        if client is not None and not isinstance(client, anthropic.Anthropic):
            kind = type(client).__name__
            hint = " (dsbatch needs the synchronous client)" if "Async" in kind else ""
            raise TypeError(f"client must be an anthropic.Anthropic, not {kind}{hint}")
        # Built on first use: a job whose answers are all cached needs no key at all.
        self._given = client
        self._client: anthropic.Anthropic | None = None
        # The anthropic-version every call sends instead of the client's: a job's requests were
        # made for one version, and go out under it whatever client goes on with the job.
        self._version = api_version
        self.clock = clock
        # The server's clock minus ours, from the Date header of the latest answer (None until
        # one came): intents are dated by the server's clock, which reconcile matches against.
        self.skew: float | None = None

    def _saw(self, headers: Any) -> float | None:
        """Note the server's time from an answer's headers; returns it."""
        server = _server_time(headers)
        if server is not None:
            self.skew = server - self.clock()
        return server

    def server_now(self) -> float | None:
        """The server's time now, as far as the latest answer tells."""
        return None if self.skew is None else self.clock() + self.skew

    @property
    def client(self) -> anthropic.Anthropic:
        if self._client is None:
            client = self._given
            if client is None:
                # The SDK finds credentials in the environment or in an Anthropic profile.
                missing = NoCredentials(
                    "no Anthropic credentials: set ANTHROPIC_API_KEY (or configure an Anthropic "
                    "profile), or pass client=anthropic.Anthropic(...)"
                )
                try:
                    client = anthropic.Anthropic()
                except anthropic.AnthropicError as e:
                    raise missing from e
                if not any(
                    getattr(client, a, None) for a in ("api_key", "auth_token", "credentials")
                ):
                    raise missing
            version = {"anthropic-version": self._version} if self._version else None
            self._client = client.with_options(max_retries=0, default_headers=version)
        return self._client

    def where(self) -> tuple[str, str]:
        """Where the calls go, and where that came from (for messages)."""
        env = os.environ.get("ANTHROPIC_BASE_URL")
        url = self.base_url
        if self._given is not None:
            source = "came from the client given to dsbatch.map (client=)"
            if env and env.rstrip("/") == url:
                source += ", which read it from ANTHROPIC_BASE_URL"
            return url, source
        if env:
            return url, "came from ANTHROPIC_BASE_URL"
        return url, "is the anthropic SDK's default"

    @property
    def key_hash(self) -> str:
        client = self.client
        return key_hash(getattr(client, "api_key", None) or getattr(client, "auth_token", None))

    @property
    def base_url(self) -> str:
        """Where this backend's calls go (no trailing slash), read without building a client."""
        if self._given is not None:
            return str(self._given.base_url).rstrip("/")
        return (os.environ.get("ANTHROPIC_BASE_URL") or _DEFAULT_BASE_URL).rstrip("/")

    def declared_headers(self) -> dict[str, str]:
        """The headers the given client sends with every call (names lower-cased)."""
        if self._given is None:
            return {}
        return {str(k).lower(): str(v) for k, v in self._given.default_headers.items()}

    def identify(self) -> dict[str, str]:
        """The headers (names lower-cased) of one cheap answer: ``list`` of one batch."""
        try:
            response = self.client.messages.batches.with_raw_response.list(limit=1)
        except anthropic.APIError as e:
            raise _api_error(
                "checking the API before the first batch", e, where=self.where()
            ) from e
        self._saw(response.headers)
        return {name.lower(): value for name, value in response.headers.items()}

    @property
    def api_version(self) -> str:
        """The ``anthropic-version`` this client sends (it decides which params are allowed);
        read without building a client, so a job answered from the cache needs no key."""
        if self._version:
            return self._version
        if self._given is not None:
            version = self._given.default_headers.get("anthropic-version")
            if isinstance(version, str):
                return version
        return ANTHROPIC_API_VERSION

    def create(self, body: bytes, betas: Sequence[str] = ()) -> BatchInfo:
        """Create one batch from a ready JSON body ``{"requests": [...]}``.

        Raises ``CreateOutcomeUnknown`` when the batch may exist although no answer came back,
        and ``BatchAPIError`` when it was refused (nothing was created).
        """
        headers = {"Content-Type": "application/json"}
        if betas:
            headers["anthropic-beta"] = ",".join(betas)
        try:
            batch = self.client.post(
                "/v1/messages/batches",
                cast_to=MessageBatch,
                content=body,
                options={"headers": headers},
            )
        except anthropic.APIConnectionError as e:
            raise CreateOutcomeUnknown(f"creating a batch got no answer: {_clause(str(e))}") from e
        except anthropic.APIStatusError as e:
            error = _api_error("creating a batch", e)
            if e.status_code >= 500 or e.status_code in (408, 409):
                # The server may have made the batch before failing to answer.
                raise CreateOutcomeUnknown(
                    str(error), status_code=e.status_code, retry_after=error.retry_after
                ) from e
            raise error from e
        return BatchInfo.from_sdk(batch)

    def count_tokens(self, params: dict[str, Any], betas: Sequence[str] = ()) -> int:
        """Every input token of one request's params (cache reads and writes included), by the
        free token-counting endpoint; the keys it refuses are left out."""
        kept = {key: params[key] for key in COUNT_TOKENS_KEYS if key in params}
        headers = {"anthropic-beta": ",".join(betas)} if betas else None
        try:
            counted = self.client.with_options(timeout=_COUNT_TIMEOUT).messages.count_tokens(
                **kept, extra_headers=headers
            )
        except anthropic.APIError as e:
            raise _api_error("counting tokens", e) from e
        return int(counted.input_tokens)

    def message(
        self, body: bytes, betas: Sequence[str] = (), *, timeout: float = 600.0
    ) -> dict[str, Any]:
        """One call of the Messages API (``POST /v1/messages``, standard price) with a ready
        JSON body: the exact bytes a batch would send as ``params``. The answer is the Message
        as the API sent it (a dict).

        The body goes out raw: ``messages.create`` would refuse params the API takes (sampling
        params in SDK 2.16, a ``max_tokens`` too large to answer without streaming within the
        SDK's default timeout), so the timeout is explicit instead.
        """
        headers = {"Content-Type": "application/json"}
        if betas:
            headers["anthropic-beta"] = ",".join(betas)
        try:
            message = self.client.post(
                "/v1/messages",
                cast_to=Message,
                content=body,
                options={"headers": headers, "timeout": timeout},
            )
        except anthropic.APIError as e:
            raise _api_error("the Messages API call", e, where=self.where()) from e
        return message.to_dict(mode="json")

    def retrieve(self, batch_id: str) -> BatchInfo:
        try:
            response = self.client.messages.batches.with_raw_response.retrieve(batch_id)
            batch = response.parse()
        except anthropic.APIError as e:
            raise _api_error("retrieving batch", e, batch_id, where=self.where()) from e
        self._saw(response.headers)
        return BatchInfo.from_sdk(batch)

    def cancel(self, batch_id: str) -> BatchInfo:
        """Ask the API to cancel a batch: it ends ``canceling``, then ``ended``; what it had
        already answered is kept, the rest ends canceled (and is not billed)."""
        try:
            batch = self.client.messages.batches.cancel(batch_id)
        except anthropic.APIError as e:
            raise _api_error("canceling batch", e, batch_id) from e
        return BatchInfo.from_sdk(batch)

    def recent(
        self, since: float | None = None, *, limit: int = 1000, action: str = "listing batches"
    ) -> list[BatchInfo]:
        """The batches of this key's workspace, newest first: one page, or with ``since``
        (server time) every page back to the first batch created before that moment.
        ``action`` is how an error names the call (what the user would recognise)."""
        batches: list[BatchInfo] = []
        after: str | None = None
        while True:
            try:
                kwargs = {"limit": limit} if after is None else {"limit": limit, "after_id": after}
                response = self.client.messages.batches.with_raw_response.list(**kwargs)
                page = response.parse()
            except anthropic.APIError as e:
                raise _api_error(action, e, where=self.where()) from e
            self._saw(response.headers)
            batches.extend(BatchInfo.from_sdk(b) for b in page.data)
            if since is None or not page.has_more or not batches or batches[-1].created_at < since:
                return batches
            after = batches[-1].id

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
        except (anthropic.APIError, OSError) as e:
            raise BatchAPIError(
                f"downloading the results of batch {batch.id} was cut off: {_clause(str(e))}",
                batch_id=batch.id,
            ) from e
        except Exception as e:
            # httpx2 reports a cut body with its own transport errors, outside anthropic's tree.
            if type(e).__module__.split(".")[0] not in ("httpx2", "httpx", "httpcore", "h11"):
                raise
            raise BatchAPIError(
                f"downloading the results of batch {batch.id} was cut off: {_clause(str(e))}",
                batch_id=batch.id,
            ) from e
