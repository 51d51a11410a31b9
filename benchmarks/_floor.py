"""The floor: the least work a script can do for the job ``map_rows.py`` gives dsbatch, against
the same emulator, with nothing dsbatch adds (no cache, no ledger, no checks, no status column).

Rows are read in Arrow batches, the prompt function is called once per row, each request is
compact canonical JSON (sorted keys, no spaces, UTF-8) named by its xxh3_128 with identical
requests sent once, the create body is joined as bytes and POSTed raw (one batch per 100,000
requests, no more in the processing queue at once than the queue limit dsbatch is given), each
batch is polled until it ends, its results are downloaded raw and parsed by ``pyarrow.json``, an
Arrow ``take`` fans them back to the rows, and one column is attached.
"""

from __future__ import annotations

import io
import json
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
import xxhash
from datasets import Dataset

__all__ = ["download_seconds", "run_floor"]

_ENCODE = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode
_MAX_REQUESTS = 100_000
_MAX_BYTES = 256 * 1024 * 1024 - 1024
# Only what the column needs: pyarrow skips the rest of each line.
_SCHEMA = pa.schema(
    [
        ("custom_id", pa.string()),
        (
            "result",
            pa.struct(
                [
                    ("type", pa.string()),
                    (
                        "message",
                        pa.struct([("content", pa.list_(pa.struct([("text", pa.string())])))]),
                    ),
                ]
            ),
        ),
    ]
)


class _Api:
    """Raw HTTP against the Message Batches API, with the headers the SDK sends."""

    def __init__(self, base_url: str, api_key: str, version: str, poll_interval: float) -> None:
        self.base = base_url.rstrip("/")
        self.headers = {
            "x-api-key": api_key,
            "anthropic-version": version,
            "content-type": "application/json",
        }
        self.poll_interval = poll_interval

    def _call(self, url: str, data: bytes | None = None) -> bytes:
        request = urllib.request.Request(url, data=data, headers=self.headers)
        with urllib.request.urlopen(request, timeout=600) as response:
            return response.read()  # type: ignore[no-any-return]

    def create(self, body: bytes) -> str:
        return json.loads(self._call(f"{self.base}/v1/messages/batches", body))["id"]  # type: ignore[no-any-return]

    def wait(self, batch_id: str) -> str:
        while True:
            batch = json.loads(self._call(f"{self.base}/v1/messages/batches/{batch_id}"))
            if batch["processing_status"] == "ended":
                return batch["results_url"]  # type: ignore[no-any-return]
            time.sleep(self.poll_interval)

    def download(self, url: str) -> bytes:
        return self._call(url)


def download_seconds(base_url: str, api_key: str, version: str, batch_ids: list[str]) -> float:
    """Seconds to download the batches' results raw, read whole and parsed by nothing: the
    server's part of any client's download."""
    api = _Api(base_url, api_key, version, 0.0)
    start = time.perf_counter()
    for batch_id in batch_ids:
        api.download(f"{api.base}/v1/messages/batches/{batch_id}/results")
    return time.perf_counter() - start


def _bodies(
    ds: Dataset, prompt: Callable[[dict[str, Any]], str], params: dict[str, Any]
) -> tuple[dict[bytes, bytes], list[str]]:
    """custom_id -> canonical params (each distinct request once), and each row's custom_id."""
    bodies: dict[bytes, bytes] = {}
    row_ids: list[str] = []
    for batch in ds.with_format("arrow").iter(batch_size=10_000):
        for row in batch.to_pylist():
            body = _ENCODE({**params, "messages": [{"role": "user", "content": prompt(row)}]})
            data = body.encode()
            custom_id = "f_" + xxhash.xxh3_128_hexdigest(data)
            bodies.setdefault(custom_id.encode(), data)
            row_ids.append(custom_id)
    return bodies, row_ids


def _create_bodies(bodies: dict[bytes, bytes]) -> list[tuple[bytes, int]]:
    """The create bodies, each under the batch limits, and the requests each holds."""
    out: list[tuple[bytes, int]] = []
    items: list[bytes] = []
    size = 0
    for custom_id, body in bodies.items():
        item = b'{"custom_id":"' + custom_id + b'","params":' + body + b"}"
        if items and (len(items) == _MAX_REQUESTS or size + len(item) + 1 > _MAX_BYTES):
            out.append((b'{"requests":[' + b",".join(items) + b"]}", len(items)))
            items, size = [], 0
        items.append(item)
        size += len(item) + 1
    if items:
        out.append((b'{"requests":[' + b",".join(items) + b"]}", len(items)))
    return out


def run_floor(
    ds: Dataset,
    prompt: Callable[[dict[str, Any]], str],
    params: dict[str, Any],
    *,
    base_url: str,
    api_key: str,
    version: str,
    poll_interval: float,
    max_queued: int,
    column: str = "response",
) -> tuple[Dataset, dict[str, float]]:
    """The dataset with the answer's text as ``column``, and the seconds of each stage.

    At most ``max_queued`` requests are in the processing queue at once, as the API allows (it
    refuses more with a 429: 100,000 at the lowest tier, 500,000 at the highest): a batch that
    does not fit waits until the oldest in flight has ended and been downloaded."""
    api = _Api(base_url, api_key, version, poll_interval)
    seconds: dict[str, float] = dict.fromkeys(("submit", "wait", "download"), 0.0)
    start = time.perf_counter()
    bodies, row_ids = _bodies(ds, prompt, params)
    seconds["render"] = time.perf_counter() - (mark := start)

    def timed(stage: str, call: Callable[[], Any]) -> Any:
        mark = time.perf_counter()
        try:
            return call()
        finally:
            seconds[stage] += time.perf_counter() - mark

    tables: list[pa.Table] = []
    in_flight: list[tuple[str, int]] = []  # (batch id, requests), oldest first
    queued = 0

    def collect_oldest() -> None:
        nonlocal queued
        batch_id, requests = in_flight.pop(0)
        url = timed("wait", lambda: api.wait(batch_id))
        tables.append(timed("download", lambda: _parse(api.download(url))))
        queued -= requests

    mark = time.perf_counter()
    created = _create_bodies(bodies)
    seconds["submit"] += time.perf_counter() - mark
    del bodies
    for body, requests in created:
        while in_flight and queued + requests > max_queued:
            collect_oldest()
        in_flight.append((timed("submit", lambda body=body: api.create(body)), requests))
        queued += requests
    while in_flight:
        collect_oldest()
    results = pa.concat_tables(tables)

    mark = time.perf_counter()
    message = pc.struct_field(results["result"], "message")
    first = pc.list_element(pc.struct_field(message, "content"), 0)
    texts = pc.struct_field(first, "text")
    at = pc.index_in(pa.array(row_ids, pa.string()), value_set=results["custom_id"])
    out = ds.add_column(column, texts.take(at).combine_chunks())  # type: ignore[arg-type]
    seconds["join"] = time.perf_counter() - mark
    seconds["total"] = time.perf_counter() - start
    return out, seconds


def _parse(data: bytes) -> pa.Table:
    return pj.read_json(
        io.BytesIO(data),
        parse_options=pj.ParseOptions(explicit_schema=_SCHEMA, unexpected_field_behavior="ignore"),
    )
