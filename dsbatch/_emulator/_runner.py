"""The emulator as a context manager for tests, and as a server for the command line."""

from __future__ import annotations

import json
import secrets
import signal
import sys
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

from dsbatch._emulator._faults import Faults
from dsbatch._emulator._responder import Responder, default_responder
from dsbatch._emulator._server import ORIGIN_HEADER, EmulatorHTTPServer, ServerConfig
from dsbatch._emulator._state import Clock, Store
from dsbatch._limits import MAX_BATCH_BYTES, MAX_BATCH_REQUESTS

if TYPE_CHECKING:
    import anthropic

__all__ = ["Emulator", "serve_forever"]


class Emulator:
    """A local Anthropic API (Message Batches, Messages, token counting) on a real loopback
    HTTP server, run in a background thread.

    ::

        with Emulator(delay=60) as emu:
            client = emu.client()
            batch = client.messages.batches.create(requests=[...])
            emu.advance(60)                      # virtual time: nothing sleeps
            client.messages.batches.results(batch.id)

    ``delay`` is how many emulator seconds a batch takes; the emulator's clock only moves when
    ``advance`` is called (``realtime=True`` makes it follow the wall clock as well, as the
    command-line server does). ``responder(custom_id, params) -> str | dict`` replaces the
    built-in answers (see ``default_responder``). ``api_key`` makes every other key a 401,
    except the keys of ``workspaces``.
    ``max_requests`` and ``max_bytes`` are the per-batch limits (100,000 requests, 256 MB).
    ``seed`` fixes the batch ids (random by default, so two emulators never share an id).

    Endpoints: the Message Batches API (create, retrieve, list, cancel, delete, results);
    ``POST /v1/messages`` (``client.messages.create``), which answers at once from the same
    responder (the same params give the same answer text as in a batch; the responder's
    ``custom_id`` is "") and refuses with 400 what a batch would end errored; and
    ``POST /v1/messages/count_tokens`` (``client.messages.count_tokens``), which answers
    ``{"input_tokens": N}`` by the counting rule behind every usage figure. Each also answers
    under ``?beta=true``; a results download with ``?beta=true`` (the beta endpoint) gives each
    Message the fields of the beta schema (``diagnostics``, ``context_management``, usage
    ``iterations`` and ``speed``). Every answer carries the header ``x-dsbatch-emulator: 1``,
    which tells a client it is talking to an emulator, not the real API, and a ``request-id``
    unique to the call. As the API does, a batch's results file is written once, when the
    batch ends (the beta form on its first download), and every download streams the same
    bytes (past 1 MB from an unlinked temporary file, freed when the batch is deleted).

    Requests are validated as the API validates them: at create only the batch's structure (the
    body, the requests list, custom_id pattern and uniqueness, params being an object, no
    ``stream: true``) is a 400; everything inside params is checked while processing, each
    bad request ending ``errored`` (``invalid_request_error``, the API's wording) without
    blocking the others: missing or mistyped params, unknown params, bad content blocks, empty
    or whitespace-only text, a final assistant turn ending in whitespace, sampling params on
    models that reject them, ``max_tokens`` above the model's output limit (the
    ``output-300k-2026-03-24`` beta raising it where supported), thinking forms the model does
    not take, a thinking budget under 1,024 or not below ``max_tokens``, thinking with a forced
    tool, a ``tool_choice`` naming no tool, more than 4 cache breakpoints.

    Answers: structured requests get JSON satisfying every constraint of the schema, the hints
    ``transform_schema`` moves into descriptions included (``pattern``, lengths, bounds,
    formats). A request that thinks (``thinking`` enabled or adaptive, or a model that always
    thinks) gets a ``thinking`` block first, billed as output within ``max_tokens``; its text
    is "" on models that omit thinking unless ``thinking.display`` is "summarized". Prompt
    caching is modelled: ``cache_control`` breakpoints write and read cached prefixes at least
    the model's minimum cacheable length, per workspace, with their TTL on the emulator clock
    (``cache_creation_input_tokens``, ``cache_read_input_tokens``). A batch's requests are
    processed in order, and batches in the order they end, so within one batch the first
    request carrying a prefix writes it and the later ones read it.

    Batches are scoped to a workspace, as the real ones are: ``workspaces`` maps API key ->
    workspace name, and every key not in it belongs to the workspace "default". A batch belongs
    to the workspace of the key that created it; a key of another workspace gets 404 on its
    retrieve, cancel, delete and results URL and does not see it in list, while two keys of
    one workspace share their batches (and prompt cache). ``batch_workspace(batch_id)`` names a
    batch's workspace. ``batches``, ``received``, ``calls`` and ``results_of`` see every
    workspace. The ``anthropic-workspace-id`` header is not checked.

    Each batch keeps the headers of the create that made it: ``batch_version(batch_id)`` is its
    ``anthropic-version`` (2023-06-01 when the header is absent; from 2026-10-21 on,
    ``temperature``/``top_p``/``top_k`` and a few content blocks end a request errored) and
    ``batch_betas(batch_id)`` its ``anthropic-beta`` list. ``last_create_headers`` holds every
    header of the last create call, names lower-cased. Every answer's ``Date`` header is
    emulator time.

    Faults (``Faults``): HTTP errors for any endpoint name (``create`` ... ``results``,
    ``messages``, ``count_tokens``), lost create answers, cut or short downloads, and per batch
    request: errored, invalid or expired requests, prose around structured answers, and
    ``redacted_thinking`` blocks.
    """

    def __init__(
        self,
        delay: float = 0.0,
        faults: Faults | None = None,
        responder: Responder | None = None,
        api_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        realtime: bool = False,
        max_requests: int = MAX_BATCH_REQUESTS,
        max_bytes: int = MAX_BATCH_BYTES,
        seed: int | None = None,
        workspaces: Mapping[str, str] | None = None,
    ) -> None:
        if delay < 0:
            raise ValueError(f"delay must be >= 0 seconds, not {delay}")
        workspace_of = dict(workspaces or {})
        for key, name in workspace_of.items():
            if not (isinstance(key, str) and key and isinstance(name, str) and name):
                raise ValueError(
                    f"workspaces maps API keys to workspace names, both non-empty strings, "
                    f"not {key!r}: {name!r}"
                )
        self._api_key = api_key
        self._address = (host, port)
        self._clock = Clock(realtime=realtime)
        self._store = Store(
            clock=self._clock,
            delay=delay,
            responder=responder or default_responder,
            faults=faults if faults is not None else Faults(),
            seed=secrets.randbits(64) if seed is None else seed,
        )
        self._config = ServerConfig(
            api_key=api_key,
            max_requests=max_requests,
            max_bytes=max_bytes,
            workspaces=workspace_of,
        )
        self._server: EmulatorHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> Emulator:
        """Bind the port and serve in a daemon thread (``with Emulator()`` does this)."""
        if self._server is not None:
            raise RuntimeError("this Emulator is already running")
        server = EmulatorHTTPServer(self._address, self._store, self._config)
        host, port = server.socket.getsockname()[:2]
        self._store.base_url = f"http://{host}:{port}"
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"dsbatch-emulator-{port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, drop open connections and close the socket."""
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        self._store.close()
        if thread is not None:
            thread.join()
        self._server = self._thread = None

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- clients --------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``: no trailing slash, no ``/v1``."""
        if not self._store.base_url:
            raise RuntimeError("the Emulator is not started: use `with Emulator() as emu:`")
        return self._store.base_url

    def client(self, **kwargs: Any) -> anthropic.Anthropic:
        """An ``anthropic.Anthropic`` pointed at the emulator; kwargs go to its constructor.
        It sends ``x-dsbatch-emulator: 1``, so dsbatch knows without a call that its answers
        are the emulator's."""
        import anthropic

        return anthropic.Anthropic(base_url=self.base_url, **self._client_kwargs(kwargs))

    def async_client(self, **kwargs: Any) -> anthropic.AsyncAnthropic:
        """An ``anthropic.AsyncAnthropic`` pointed at the emulator."""
        import anthropic

        return anthropic.AsyncAnthropic(base_url=self.base_url, **self._client_kwargs(kwargs))

    def _client_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        kwargs.setdefault("api_key", self._api_key or "test-key")
        kwargs["default_headers"] = {ORIGIN_HEADER: "1", **(kwargs.get("default_headers") or {})}
        return kwargs

    # --- the clock ------------------------------------------------------------------------

    def now(self) -> float:
        """Emulator time in epoch seconds."""
        return self._clock.now()

    def advance(self, seconds: float) -> None:
        """Move the clock forward; batches whose time has come end. Usable as ``sleep``."""
        with self._store.lock:
            self._clock.advance(seconds)
            self._store.settle_all()

    @property
    def delay(self) -> float:
        """Emulator seconds a batch created from now on takes to end."""
        return self._store.delay

    @delay.setter
    def delay(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"delay must be >= 0 seconds, not {seconds}")
        with self._store.lock:
            self._store.delay = seconds

    # --- faults and introspection ---------------------------------------------------------

    @property
    def faults(self) -> Faults:
        """The live Faults: change its fields between calls, or assign a new one."""
        return self._store.faults

    @faults.setter
    def faults(self, faults: Faults) -> None:
        with self._store.lock:
            self._store.faults = faults

    @property
    def lock(self) -> threading.RLock:
        """The lock guarding the emulator's state (hold it to change faults atomically). Calls
        are counted, and HTTP faults taken, under a lock of their own: a call is answered with
        its fault while the emulator works on a batch."""
        return self._store.lock  # type: ignore[return-value]

    @property
    def calls(self) -> Counter[str]:
        """HTTP calls received per endpoint, counted even when a fault answered them."""
        return self._store.calls

    @property
    def received(self) -> list[tuple[str, str]]:
        """(batch_id, custom_id) of every request of every accepted create, in order."""
        return self._store.received

    @property
    def messages_received(self) -> list[dict[str, Any]]:
        """The body of every ``POST /v1/messages`` that got past validation, in order."""
        return self._store.messages_received

    @property
    def duplicate_custom_ids(self) -> set[str]:
        """custom_ids received more than once across accepted creates."""
        return self._store.duplicate_custom_ids

    @property
    def last_create_body(self) -> Any:
        """The parsed JSON body of the last create call (even one that was refused)."""
        return self._store.last_create_body

    @property
    def last_create_headers(self) -> dict[str, str]:
        """The headers of the last create call (even one that was refused), names lower-cased;
        a header sent more than once has its values joined by commas."""
        return dict(self._store.last_create_headers)

    def batch_version(self, batch_id: str) -> str:
        """The ``anthropic-version`` the batch was created under (KeyError once deleted)."""
        with self._store.lock:
            return self._store.batches[batch_id].version

    def batch_workspace(self, batch_id: str) -> str:
        """The workspace of the key that created the batch (KeyError once deleted)."""
        with self._store.lock:
            return self._store.batches[batch_id].workspace

    def batch_betas(self, batch_id: str) -> list[str]:
        """The betas of the create's ``anthropic-beta`` header, in order ([] when absent)."""
        with self._store.lock:
            return list(self._store.batches[batch_id].betas)

    @property
    def batches(self) -> Mapping[str, dict[str, Any]]:
        """batch_id -> the batch as a MessageBatch dict (deleted batches are gone)."""
        return _BatchesView(self._store)

    def results_of(self, batch_id: str, *, beta: bool = False) -> list[dict[str, Any]]:
        """The results lines of an ended batch, as dicts, in the order they are served
        (``beta``: as the beta endpoint serves them)."""
        body = self._store.results(batch_id, beta=beta).body()
        return [json.loads(line) for line in body.splitlines()]

    def reset_stats(self) -> None:
        """Forget calls, received requests and messages, and duplicates (fault draws keep
        their history)."""
        with self._store.lock:
            self._store.calls.clear()
            self._store.received.clear()
            self._store.messages_received.clear()
            self._store.duplicate_custom_ids.clear()


class _BatchesView(Mapping[str, dict[str, Any]]):
    def __init__(self, store: Store) -> None:
        self._store = store

    def __getitem__(self, batch_id: str) -> dict[str, Any]:
        with self._store.lock:
            batch = self._store.batches[batch_id]
            self._store.settle(batch, observe_cancel=False)
            return self._store.to_dict(batch)

    def __iter__(self) -> Iterator[str]:
        with self._store.lock:
            return iter(list(self._store.batches))

    def __len__(self) -> int:
        return len(self._store.batches)


def serve_forever(
    host: str = "127.0.0.1",
    port: int = 8765,
    delay: float = 0.0,
    faults: Faults | None = None,
    *,
    api_key: str | None = None,
    responder: Responder | None = None,
    workspaces: Mapping[str, str] | None = None,
) -> None:
    """Serve the emulator on a clock that follows real time, until SIGINT or SIGTERM.

    ``workspaces`` (API key -> workspace name) is as for ``Emulator``.

    Prints ``dsbatch emulator listening on http://HOST:PORT`` once listening.
    """
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous: dict[int, Any] = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[signum] = signal.signal(signum, on_signal)
        except ValueError:  # not the main thread: rely on KeyboardInterrupt
            break
    emulator = Emulator(
        delay=delay,
        faults=faults,
        responder=responder,
        api_key=api_key,
        host=host,
        port=port,
        realtime=True,
        workspaces=workspaces,
    )
    try:
        with emulator:
            print(f"dsbatch emulator listening on {emulator.base_url}", flush=True)
            if faults is not None and faults.describe():
                print(f"dsbatch emulator faults: {faults.describe()}", file=sys.stderr, flush=True)
            while not stop.wait(0.2):
                pass
    finally:
        for restored, handler in previous.items():
            signal.signal(restored, handler)
