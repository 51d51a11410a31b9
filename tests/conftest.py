"""Every test runs with its own cache directory and without the developer's real credentials."""

from __future__ import annotations

import os

import pytest
from support import echo

from dsbatch import _origin
from dsbatch._origin import ANTHROPIC
from dsbatch.testing import Emulator


@pytest.fixture(autouse=True)
def _isolated(tmp_path):
    # A MonkeyPatch of its own: a test calling monkeypatch.undo() cannot reach the real cache.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DSBATCH_CACHE", str(tmp_path / "dsbatch-cache"))
        # No key, base URL or profile of the developer's; the SDK also reads profiles from
        # its config directory, so point that at an empty one.
        for name in list(os.environ):
            if name.startswith("ANTHROPIC_"):
                mp.delenv(name)
        mp.setenv("ANTHROPIC_CONFIG_DIR", str(tmp_path / "anthropic-config"))
        yield


@pytest.fixture
def emu():
    """An emulator that answers each request with its own prompt (see ``support.echo``)."""
    with Emulator(delay=0, responder=echo) as emulator:
        yield emulator


@pytest.fixture
def api(monkeypatch):
    """An emulator standing for the Anthropic API: its base URL counts as the API's own (a
    test module may define an ``api`` of its own)."""
    with Emulator(delay=0, responder=echo) as stand_in:
        real = _origin.origin_of_url
        monkeypatch.setattr(
            _origin,
            "origin_of_url",
            lambda url: ANTHROPIC if url == stand_in.base_url else real(url),
        )
        yield stand_in
