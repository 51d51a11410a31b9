"""The HTTP side: routing, auth, body limits, injected HTTP faults, and the results stream.

Routes: the Message Batches API (``/v1/messages/batches...``), the Messages API
(``POST /v1/messages``) and token counting (``POST /v1/messages/count_tokens``), each also
under ``?beta=true`` as the beta endpoints; a results download with ``?beta=true`` serves each
Message in the beta form.

The API key of a call picks its workspace (``ServerConfig.workspaces``, else
``DEFAULT_WORKSPACE``), and every endpoint, the results download included, acts only on that
workspace's batches (and prompt cache).

Every answer carries ``x-dsbatch-emulator: 1`` (so a client can tell the emulator's answers
from the real API's) and a ``request-id`` unique to the call. Its ``Date`` header is the
emulator's clock, not the machine's: a client that corrects its clock skew from it sees the
same time as the batches it polls.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import sys
import threading
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from dsbatch._emulator._errors import ApiError, default_message, error_body, error_type_for
from dsbatch._emulator._ids import prefixed_id
from dsbatch._emulator._live import count_tokens, create_message
from dsbatch._emulator._results import ResultsFile
from dsbatch._emulator._state import DEFAULT_WORKSPACE, Store
from dsbatch._emulator._validate import api_version, validate_create

__all__ = ["ORIGIN_HEADER", "EmulatorHTTPServer", "ServerConfig", "route"]

# On every answer: what tells an emulator's answers from the real API's.
ORIGIN_HEADER = "x-dsbatch-emulator"
_PREFIX = "/v1/messages/batches"
_LIVE = {"/v1/messages": "messages", "/v1/messages/count_tokens": "count_tokens"}
# A download's chunks: large, so that a download served while the emulator works on another
# batch (its next wave) takes the interpreter's lock a few times, not thousands.
_CHUNK = 8 * 2**20
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


@dataclass(frozen=True)
class ServerConfig:
    api_key: str | None  # when set, only it and the keys of ``workspaces`` are accepted
    max_requests: int
    max_bytes: int
    workspaces: Mapping[str, str] = field(default_factory=dict)  # API key -> workspace


class _TooLarge(Exception):
    def __init__(self, unread: int | None) -> None:
        self.unread = unread  # bytes still in the socket, or None when unknown (chunked)


def route(method: str, path: str) -> tuple[str, str | None] | None:
    """(endpoint, batch_id) for a call of the API, or None for any other route."""
    if path in _LIVE:
        return (_LIVE[path], None) if method == "POST" else None
    if path == _PREFIX:
        return {"POST": ("create", None), "GET": ("list", None)}.get(method)
    if not path.startswith(_PREFIX + "/"):
        return None
    parts = path[len(_PREFIX) + 1 :].split("/")
    if len(parts) == 1 and parts[0]:
        endpoint = {"GET": "retrieve", "DELETE": "delete"}.get(method)
    elif (
        len(parts) == 2
        and parts[0]
        and (method, parts[1])
        in (
            ("POST", "cancel"),
            ("GET", "results"),
        )
    ):
        endpoint = parts[1]
    else:
        return None
    return (endpoint, parts[0]) if endpoint else None


class EmulatorHTTPServer(ThreadingHTTPServer):
    """A threading HTTP/1.1 server that can drop every open connection when it stops."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], store: Store, config: ServerConfig) -> None:
        super().__init__(address, _Handler)
        self.store = store
        self.config = config
        self.request_numbers = itertools.count(1)  # request-id: unique to each call
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Wake every handler blocked on an idle keep-alive connection, so its thread ends."""
        with self._open_lock:
            open_sockets = list(self._open)
        for sock in open_sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "dsbatch-emulator"
    disable_nagle_algorithm = True
    server: EmulatorHTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # quiet: tests start many emulators

    def send_response(self, code: int, message: str | None = None) -> None:
        super().send_response(code, message)
        self.send_header(ORIGIN_HEADER, "1")

    def date_time_string(self, timestamp: float | None = None) -> str:
        """The ``Date`` header: emulator time, so it moves with ``Emulator.advance``."""
        return super().date_time_string(
            self.server.store.clock.now() if timestamp is None else timestamp
        )

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    # --- plumbing -------------------------------------------------------------------------

    def _handle(self, method: str) -> None:
        store = self.server.store
        self.request_id = prefixed_id("req_", store.seed, next(self.server.request_numbers))
        split = urlsplit(self.path)
        try:
            found = route(method, split.path)
            if found is None:
                self._read_body(self.server.config.max_bytes)
                raise ApiError(404, f"Not found: {method} {split.path}")
            endpoint, batch_id = found
            # Not under the state's lock: a call is counted, and answered with a fault, while a
            # realtime emulator works on a batch in the background (``Store.finish_when_due``).
            with store.wire_lock:
                store.calls[endpoint] += 1
            body = self._read_body(self.server.config.max_bytes)
            workspace = self._workspace()
            with store.wire_lock:
                fault = store.faults.take_http(endpoint)
            if fault is not None:
                error_type = error_type_for(fault.status)
                message = f"{default_message(error_type)} (emulated fault)"
                self._send_json(
                    fault.status, error_body(error_type, message, self.request_id), fault.headers()
                )
                return
            query = parse_qs(split.query)
            beta = query.get("beta", [""])[-1] == "true"
            if endpoint == "create":
                self._create(body, workspace)
            elif endpoint == "list":
                self._list(query, workspace)
            elif endpoint == "results":
                assert batch_id is not None
                self._results(batch_id, workspace, beta)
            elif endpoint in _LIVE.values():
                self._live(endpoint, body, workspace, beta)
            else:
                assert batch_id is not None
                self._by_id(endpoint, batch_id, workspace)
        except _TooLarge as exc:
            limit = self.server.config.max_bytes
            self.close_connection = True
            self._send_error(
                ApiError(413, f"Request exceeds the maximum allowed number of bytes ({limit}).")
            )
            self._drain(exc.unread)
        except ApiError as exc:
            self._send_error(exc)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # a bug or a failing responder: answer it, and say so
            traceback.print_exc(file=sys.stderr)
            self._send_error(ApiError(500, f"emulator failure: {exc!r}"))

    def _base_url(self) -> str:
        """The address the client used: results_url must work from where the client is."""
        host = self.headers.get("host")
        return f"http://{host}" if host else self.server.store.base_url

    def _workspace(self) -> str:
        """The workspace of the call's API key; a 401 when the key is missing or refused."""
        key = self.headers.get("x-api-key")
        authorization = self.headers.get("authorization") or ""
        if not key and authorization[:7].lower() == "bearer ":
            key = authorization[7:].strip()
        if not key:
            raise ApiError(401, "x-api-key header is required")
        config = self.server.config
        if config.api_key is not None and key != config.api_key and key not in config.workspaces:
            raise ApiError(401, "invalid x-api-key")
        return config.workspaces.get(key, DEFAULT_WORKSPACE)

    def _read_body(self, limit: int) -> bytes:
        if "chunked" in (self.headers.get("transfer-encoding") or "").lower():
            return self._read_chunked(limit)
        length = int(self.headers.get("content-length") or 0)
        if length > limit:
            raise _TooLarge(length)
        return self.rfile.read(length) if length else b""

    def _read_chunked(self, limit: int) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            total += size
            if total > limit:
                raise _TooLarge(None)
            parts.append(self.rfile.read(size))
            self.rfile.readline()

    def _drain(self, unread: int | None) -> None:
        """Read and drop an refused body, so the client can finish sending and see the 413."""
        if unread is None:
            return
        self.connection.settimeout(10)
        try:
            while unread > 0:
                got = self.rfile.read(min(unread, 1 << 20))
                if not got:
                    break
                unread -= len(got)
        except OSError:
            pass

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = _encode(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("request-id", self.request_id)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, error: ApiError) -> None:
        body = error_body(error.error_type, error.message, self.request_id)
        self._send_json(error.status, body)

    # --- endpoints ------------------------------------------------------------------------

    def _create(self, body: bytes, workspace: str) -> None:
        store, config = self.server.store, self.server.config
        try:
            payload = json.loads(body)
        except ValueError as exc:
            raise ApiError(400, f"Request body is not valid JSON: {exc}") from None
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]},{value}" if key in headers else value
        with store.lock:
            store.last_create_body = payload
            store.last_create_headers = headers
        requests = validate_create(payload, max_requests=config.max_requests)
        # Betas and version apply to every request of the batch, and are only acted on while
        # processing: params are validated asynchronously.
        betas = [beta.strip() for beta in headers.get("anthropic-beta", "").split(",")]
        batch = store.create(
            requests,
            version=api_version(headers.get("anthropic-version")),
            betas=[beta for beta in betas if beta],
            workspace=workspace,
        )
        with store.lock:
            lost = store.faults.take_lose_create()
            answer = store.to_dict(batch, self._base_url())
        if lost:
            self.close_connection = True  # the batch exists, its answer never arrives
        else:
            self._send_json(200, answer)
        store.finish_when_due(batch)

    def _list(self, query: dict[str, list[str]], workspace: str) -> None:
        raw_limit = query.get("limit", ["20"])[-1]
        try:
            limit = int(raw_limit)
        except ValueError:
            raise ApiError(
                400, f"limit: Input should be a valid integer, not {raw_limit!r}"
            ) from None
        if not 1 <= limit <= 1000:
            raise ApiError(400, f"limit: Input should be between 1 and 1000, not {limit}")
        before_id = query.get("before_id", [None])[-1]
        after_id = query.get("after_id", [None])[-1]
        if before_id is not None and after_id is not None:
            raise ApiError(400, "before_id and after_id cannot both be given")
        store = self.server.store
        with store.lock:
            batches, has_more = store.page(limit, before_id, after_id, workspace)
            data = [store.to_dict(batch, self._base_url()) for batch in batches]
        self._send_json(
            200,
            {
                "data": data,
                "has_more": has_more,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            },
        )

    def _by_id(self, endpoint: str, batch_id: str, workspace: str) -> None:
        store = self.server.store
        ended = store.ended(batch_id, workspace) if endpoint == "retrieve" else None
        if ended is not None:  # as it will stay: answered while another batch is worked on
            self._send_json(200, store.to_dict(ended, self._base_url()))
            return
        with store.lock:
            if endpoint == "delete":
                store.delete(batch_id, workspace)
                answer = {"id": batch_id, "type": "message_batch_deleted"}
            elif endpoint == "cancel":
                answer = store.to_dict(store.cancel(batch_id, workspace), self._base_url())
            else:
                answer = store.to_dict(store.get(batch_id, workspace), self._base_url())
        self._send_json(200, answer)

    def _live(self, endpoint: str, body: bytes, workspace: str, beta: bool) -> None:
        try:
            payload = json.loads(body)
        except ValueError as exc:
            raise ApiError(400, f"Request body is not valid JSON: {exc}") from None
        version = api_version(self.headers.get("anthropic-version"))
        if endpoint == "count_tokens":
            self._send_json(200, count_tokens(payload, version=version))
            return
        header = self.headers.get("anthropic-beta", "")
        answer = create_message(
            self.server.store,
            payload,
            version=version,
            betas=tuple(name.strip() for name in header.split(",") if name.strip()),
            workspace=workspace,
            beta=beta,
        )
        self._send_json(200, answer)

    def _results(self, batch_id: str, workspace: str, beta: bool) -> None:
        store = self.server.store
        faults = store.faults
        spoiled = faults.cut_results or faults.short_results  # a download fault to take
        stored = None if spoiled else store.ready_results(batch_id, workspace, beta=beta)
        cut = short = False
        if stored is None:
            with store.lock:
                stored = store.results(batch_id, workspace, beta=beta)
                cut = store.faults.take_cut_results()
                short = not cut and store.faults.take_short_results()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-jsonl")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("request-id", self.request_id)
        self.end_headers()
        try:
            self._stream(stored, stored.lines // 2 if short else stored.lines, cut)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception:  # headers are gone: the only honest answer left is a broken body
            traceback.print_exc(file=sys.stderr)
            self.close_connection = True

    def _stream(self, stored: ResultsFile, lines: int, cut: bool) -> None:
        """The first ``lines`` lines of the stored file; ``cut``: half of them, then half of
        the next line (without its newline), and the connection dropped."""
        stop = lines // 2 if cut else lines
        end = stored.end_of(stop)
        if cut and stop < stored.lines:
            # Half the next line, its newline not counted: the download ends mid-line.
            end += (stored.end_of(stop + 1) - 1 - end) // 2
        for data in stored.read(0, end, _CHUNK):
            self._write_chunk(data)
        if cut:
            self.close_connection = True  # mid-line, without the last chunk: a broken download
            return
        self.wfile.write(b"0\r\n\r\n")

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n" % len(data))
        self.wfile.write(data)
        self.wfile.write(b"\r\n")
