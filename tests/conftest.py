"""Every test runs with its own cache directory and without the developer's real credentials."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest
from support import echo

from dsbatch import _origin
from dsbatch._origin import ANTHROPIC
from dsbatch._plan import View
from dsbatch._policy import positions
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


@pytest.fixture(autouse=True)
def _numbers_checked(monkeypatch):
    """Every decision of every test is made on request numbers that are the ids': a job's
    step numbers each result and each request in flight by its id's place among the job's ids
    (found by their 64-bit keys, remembered across steps), then decides on the numbers. Each
    number is checked here against a lookup of the id itself, before the decision."""
    real = View.open_ids

    def open_ids(self: View, **kwargs: object) -> pa.Array:
        at = positions(self.needed, self.results["custom_id"])
        assert self.at.tolist() == at.tolist(), "a result numbered as another request"
        waiting = [ids for _, ids in self.waiting]
        flying = positions(self.needed, pa.concat_arrays(waiting)) if waiting else at[:0]
        expected = np.unique(flying[flying >= 0])
        assert self.waiting_at.tolist() == expected.tolist(), "a request in flight misnumbered"
        return real(self, **kwargs)

    monkeypatch.setattr(View, "open_ids", open_ids)


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
