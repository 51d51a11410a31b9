"""Test helpers: a local Anthropic API (Message Batches, Messages, token counting) to point the
SDK (and dsbatch) at; see ``Emulator`` for what it models.

::

    from dsbatch.testing import Emulator, Faults, HttpFault

    with Emulator(delay=3600, faults=Faults(errored=0.1)) as emu:
        client = emu.client(max_retries=0)
        ...
        emu.advance(3600)  # an hour of emulator time, instantly
"""

from dsbatch._emulator import Emulator, Faults, HttpFault, default_responder

__all__ = ["Emulator", "Faults", "HttpFault", "default_responder"]
