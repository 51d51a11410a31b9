"""A local emulator of the Anthropic Message Batches API, for tests and demos.

One module per job: ``_server`` (HTTP, routing, auth, HTTP faults), ``_state`` (batches, the
clock, processing), ``_validate`` (what a create is refused for, and what errors later under
the create's API version), ``_responder`` (deterministic answers and the Message around them),
``_schema`` (JSON-schema instances), ``_faults`` (what can go wrong), ``_runner`` (``Emulator``
and ``serve_forever``). The API's limits come from ``dsbatch._limits``.
"""

from dsbatch._emulator._faults import Faults, HttpFault
from dsbatch._emulator._responder import default_responder
from dsbatch._emulator._runner import Emulator, serve_forever

__all__ = ["Emulator", "Faults", "HttpFault", "default_responder", "serve_forever"]
