"""A local emulator of the Anthropic API (Message Batches, Messages, token counting), for tests
and demos.

One module per job: ``_server`` (HTTP, routing, auth, HTTP faults, the origin header),
``_state`` (batches, the clock, processing), ``_live`` (the Messages API and token counting),
``_validate`` (what a create is refused for), ``_rules`` (what a request is refused for: the
emulator's model of the API's rules, in one place), ``_params`` (reading params),
``_responder`` (deterministic answers and the Message around them), ``_thinking`` (thinking
blocks), ``_caching`` (the token counting rule and prompt caching), ``_schema`` and ``_regex``
(JSON-schema instances, strings matching a pattern), ``_faults`` (what can go wrong),
``_runner`` (``Emulator`` and ``serve_forever``). The API's limits come from ``dsbatch._limits``,
the models' facts from ``dsbatch._models``.
"""

from dsbatch._emulator._faults import Faults, HttpFault
from dsbatch._emulator._responder import default_responder
from dsbatch._emulator._runner import Emulator, serve_forever

__all__ = ["Emulator", "Faults", "HttpFault", "default_responder", "serve_forever"]
