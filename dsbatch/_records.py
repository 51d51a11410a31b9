"""What the ledger stores about a job and its batches, as typed values (no I/O here).

A batch record moves through these states, and only the ledger moves it::

    INTENT ──mark_submitted──▶ SUBMITTED ──mark_ingested──▶ INGESTED
      │  ▲                        │
      │  └──────mark_rejected─────┤  (the batch we adopted holds someone else's requests)
      │                           └──mark_lost──▶ LOST  (gone for good before its results were read,
      │                                                 or after they were lost from the cache)
      └──mark_unsent──▶ UNSENT  (the create was refused, or never made: nothing was bought)

An INTENT is written before the create call, so a process that dies during the call leaves a
record saying a batch *may* exist: the next one looks for it (``list``) before creating again.
An intent is held by a lease (``holder``, ``lease_until``: see ``_lease``); a batch once created
belongs to no process: any job that needs it may poll it and read its results.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = [
    "IN_FLIGHT",
    "RESULT_TYPES",
    "SENT",
    "USAGE_FIELDS",
    "BatchRecord",
    "BatchState",
    "Manifest",
    "RecordError",
    "record_from_journal",
]


# The types of a batch's result, and the usage counts of an answer, as the API names them:
# every module that reads results takes them from here.
RESULT_TYPES = ("succeeded", "errored", "expired", "canceled")
USAGE_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
)


class RecordError(ValueError):
    """A stored record does not have the shape this version of dsbatch writes."""


class BatchState(str, enum.Enum):
    INTENT = "intent"
    SUBMITTED = "submitted"
    INGESTED = "ingested"
    LOST = "lost"
    UNSENT = "unsent"


# A batch that holds its requests "in flight": no one else may send them.
IN_FLIGHT = frozenset({BatchState.INTENT, BatchState.SUBMITTED})
# A batch that reached the API: each of its requests was sent once more (an attempt).
SENT = frozenset({BatchState.SUBMITTED, BatchState.INGESTED, BatchState.LOST})

_TRANSITIONS = {
    BatchState.INTENT: {BatchState.SUBMITTED, BatchState.UNSENT},
    BatchState.SUBMITTED: {BatchState.INGESTED, BatchState.LOST, BatchState.INTENT},
    # Ingested, then its stored results were lost and cannot be downloaded again.
    BatchState.INGESTED: {BatchState.LOST},
    BatchState.LOST: set(),
    BatchState.UNSENT: set(),
}


@dataclass
class BatchRecord:
    """One batch of one job: its custom_ids live in a file beside it (``ids_digest`` checks it)."""

    job: str
    seq: int
    request_count: int
    ids_digest: str
    intent_at: float
    state: BatchState = BatchState.INTENT
    # The key of the last create attempt (an intent binds nothing), then of the batch's creator.
    key_hash: str = ""
    # The intent's moment by the server's clock (local clocks drift): reconcile matches by it.
    intent_server_at: float | None = None
    batch_id: str | None = None
    created_at: float | None = None  # server time
    adopted: bool = False  # found by a reconcile rather than returned by our own create
    counts: dict[str, int] = field(default_factory=dict)
    # Batches a reconcile adopted that turned out to hold someone else's requests.
    rejected: list[str] = field(default_factory=list)
    # When (the job's clock) the batch or its results were first found missing; None if seen.
    missing_since: float | None = None
    note: str = ""  # why it is lost or unsent
    # Where the batch was made (see ``_origin``); "" for a batch recorded before dsbatch kept
    # origins (the migration to format 3 tags those it can).
    origin: str = ""
    # The call that may be creating an intent's batch right now, and until when (the job's
    # clock) no one else may: see ``_lease``.
    holder: str = ""
    lease_until: float | None = None

    @property
    def name(self) -> str:
        """How messages name the batch: its id, or its place in the job before it has one."""
        return self.batch_id or f"#{self.seq} of job {self.job} (not yet created)"

    def moved(self, to: BatchState) -> BatchRecord:
        """Check that the record may go to ``to``; the ledger persists the change."""
        if to not in _TRANSITIONS[self.state]:
            raise RecordError(f"batch {self.name}: cannot go from {self.state.value} to {to.value}")
        self.state = to
        return self

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = self.state.value
        return data

    @classmethod
    def from_json(cls, data: Any) -> BatchRecord:
        if not isinstance(data, dict):
            raise RecordError("not a JSON object")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise RecordError(f"unknown fields {unknown}")
        try:
            record = cls(**data)
            record.state = BatchState(record.state)
        except (TypeError, ValueError) as e:
            raise RecordError(str(e)) from e
        if not isinstance(record.seq, int) or not isinstance(record.request_count, int):
            raise RecordError("seq and request_count must be integers")
        if record.state in SENT and not record.batch_id:
            raise RecordError(f"state {record.state.value} without a batch_id")
        return record


@dataclass
class Manifest:
    """What a job is: enough to find its rows, options and outputs, and to go on with it in
    another process, without its dataset or prompt function."""

    fingerprint: str
    created_at: float
    # split -> number of rows; the row -> custom_id mapping of each split is stored beside it.
    splits: dict[str, int]
    requests: int
    state: str = "running"  # running | finished | canceled
    model: str | None = None
    betas: list[str] = field(default_factory=list)
    origin: str = ""  # where the job's batches are made (see ``_origin``)
    # The anthropic-version its requests were made for (None: an older dsbatch's job): any
    # process that goes on with the job sends them under it.
    api_version: str | None = None
    # The keywords of the call that started the job (``MapOptions.to_json``).
    options: dict[str, Any] = field(default_factory=dict)
    # split -> {"fingerprint": the input dataset's, "files": [[path, size, mtime_ns]...]}: the
    # input rows are kept beside (``_inputs``).
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    labelled: bool = False  # a DatasetDict (its splits named in messages and returned as one)
    split_order: list[str] = field(default_factory=list)  # the splits in the dataset's order
    finished_at: float | None = None
    canceled_at: float | None = None
    # The key of the output options (column names, parse, response_format, max_attempts...)
    # the finished columns were built with, and a digest of each split's columns.
    output_key: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    # What the latest call was (models, hashes of the prompt, params and system prompt,
    # versions: ``_provenance.call_facts``); the output data carries it. {}: not recorded.
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def split_names(self) -> list[str]:
        """The splits in the order of the dataset the job was started on."""
        return self.split_order or list(self.splits)

    @property
    def fingerprints(self) -> dict[str, str]:
        """split -> the fingerprint of the input dataset the job was started on."""
        return {split: entry.get("fingerprint", "") for split, entry in self.inputs.items()}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> Manifest:
        if not isinstance(data, dict):
            raise RecordError("not a JSON object")
        names = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in names})
        except TypeError as e:
            raise RecordError(str(e)) from e


def record_from_journal(job: str, seq: int, entry: dict[str, Any]) -> BatchRecord | None:
    """A lost batch record as the journal remembers it: submitted (to be polled again), or an
    intent again if its last batch was given back."""
    try:
        released = bool(entry.get("released"))
        return BatchRecord.from_json(
            {
                "job": job,
                "seq": seq,
                "request_count": entry["request_count"],
                "ids_digest": entry["ids_digest"],
                "intent_at": entry.get("intent_at") or entry.get("created_at") or 0.0,
                "intent_server_at": entry.get("intent_server_at"),
                "state": (BatchState.INTENT if released else BatchState.SUBMITTED).value,
                "key_hash": entry.get("key_hash") or "",
                "batch_id": None if released else entry["batch_id"],
                "created_at": None if released else entry.get("created_at"),
                "adopted": bool(entry.get("adopted")),
                "rejected": [entry["batch_id"]] if released else [],
                "origin": entry.get("origin") or "",
            }
        )
    except (KeyError, RecordError):
        return None
