"""The Message Batches API's limits and constants, shared by the library and the emulator.

Where each comes from:

- ``MAX_BATCH_REQUESTS``: the OpenAPI spec's ``CreateMessageBatchParams.requests.maxItems``,
  and the batch-processing guide ("up to 100,000 Message requests or 256 MB").
- ``MAX_BATCH_BYTES``: the batch-processing guide (256 MB of request body, whichever of the two
  limits comes first); over it the API answers 413 ``request_too_large``.
- ``CUSTOM_ID_PATTERN``: the OpenAPI spec's ``MessageBatchIndividualRequestParams.custom_id``
  pattern (at most 64 characters).
- ``EXPIRY_SECONDS``: the batch-processing guide: a batch not ended after 24 hours expires its
  unfinished requests (``expires_at`` is ``created_at`` + 24 h).
- ``RESULTS_RETENTION_SECONDS``: the batch-processing guide: results can be downloaded for 29
  days after the batch was created.
- ``DEFAULT_MAX_QUEUED``: the rate-limits page: requests waiting in the processing queue across
  all of an organisation's batches, 100,000 at the lowest tier (500,000 at tier 4).
- ``API_VERSION_LEGACY``: the ``anthropic-version`` every API release accepted until 2026.
- ``API_VERSION_2026``: the first new ``anthropic-version`` since then (released 2026-10-21),
  the default of the ``anthropic`` SDK 2.x (``anthropic._constants.ANTHROPIC_API_VERSION``).
"""

__all__ = [
    "API_VERSION_2026",
    "API_VERSION_LEGACY",
    "CUSTOM_ID_PATTERN",
    "DEFAULT_MAX_QUEUED",
    "EXPIRY_SECONDS",
    "MAX_BATCH_BYTES",
    "MAX_BATCH_REQUESTS",
    "RESULTS_RETENTION_SECONDS",
]

MAX_BATCH_REQUESTS = 100_000
MAX_BATCH_BYTES = 256 * 1024 * 1024
CUSTOM_ID_PATTERN = "^[a-zA-Z0-9_-]{1,64}$"
DEFAULT_MAX_QUEUED = 100_000
EXPIRY_SECONDS = 24 * 3600
RESULTS_RETENTION_SECONDS = 29 * 24 * 3600
API_VERSION_LEGACY = "2023-06-01"
API_VERSION_2026 = "2026-10-21"
