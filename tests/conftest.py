"""Every test runs with its own cache directory and without the developer's real credentials."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated(tmp_path):
    # A MonkeyPatch of its own: a test calling monkeypatch.undo() cannot reach the real cache.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DSBATCH_CACHE", str(tmp_path / "dsbatch-cache"))
        for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL"):
            mp.delenv(name, raising=False)
        yield
