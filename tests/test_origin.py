"""Answers are kept apart by where they came from: an emulator's answers never serve a run
against the Anthropic API, nor the API's a run against an emulator; a proxy in front of the API
shares the API's answers; any other server's answers serve only that server."""

from __future__ import annotations

import json

import anthropic
import pytest
from datasets import Dataset
from support import MODEL, answers, cache_root, echo, ids_of, job_dirs, prompt, run, sent

import dsbatch
from dsbatch import _origin
from dsbatch._clock import Clock
from dsbatch._ledger import Ledger
from dsbatch._origin import ANTHROPIC, EMULATOR, resolve_origin
from dsbatch._poll import PollSchedule, call_retrying
from dsbatch.testing import Emulator


def texts(n, prefix="text"):
    return [f"{prefix} {i}" for i in range(n)]


def plain_client(emu):
    """A client of the emulator's URL that does not say it is one (as a user would write it)."""
    return anthropic.Anthropic(base_url=emu.base_url, api_key="k", max_retries=0)


def map_with(client, ds):
    return dsbatch.map(
        ds, prompt, model=MODEL, max_tokens=256, client=client, poll_interval=0, progress=False
    )


def test_the_emulators_answers_never_serve_a_run_against_the_api_nor_the_other_way(emu, api):
    rows = Dataset.from_dict({"text": texts(20)})
    run(rows, emu)  # the README's "testing your own pipeline": the default cache
    assert sent(emu) == dict.fromkeys(ids_of(texts(20)), 1)
    out = map_with(plain_client(api), rows)
    # Needed 20, sent 20: the emulator's answers were not taken for real ones.
    assert sent(api) == dict.fromkeys(ids_of(texts(20)), 1)
    assert list(out["response"]) == answers(texts(20))
    # The other way round: the API's answers of new rows do not serve an emulator run.
    more = Dataset.from_dict({"text": texts(5, "more")})
    map_with(plain_client(api), more)
    emu.reset_stats()
    run(more, emu)
    assert sent(emu) == dict.fromkeys(ids_of(texts(5, "more")), 1)
    # Each origin still reuses its own answers: nothing is sent again.
    api.reset_stats()
    emu.reset_stats()
    map_with(plain_client(api), rows)
    run(rows, emu)
    assert sum(api.calls.values()) == 0 and sum(emu.calls.values()) == 0
    assert len(job_dirs()) == 4  # one job per dataset and origin


def test_a_run_against_the_default_api_url_never_takes_the_emulators_answers(emu):
    rows = Dataset.from_dict({"text": texts(3)})
    run(rows, emu)
    # No client and no key: were the emulator's answers taken, this would succeed.
    with pytest.raises(dsbatch.BatchAPIError, match="no Anthropic credentials"):
        dsbatch.map(rows, prompt, model=MODEL, max_tokens=256, progress=False)
    assert emu.calls["create"] == 1


def test_every_emulator_shares_one_origin_and_a_plain_client_learns_it_once(emu):
    rows = Dataset.from_dict({"text": texts(4)})
    run(rows, emu)
    with Emulator(delay=0, responder=echo) as other:
        out = map_with(plain_client(other), rows)  # another port: asked what it is, once
        assert list(out["response"]) == answers(texts(4))
        assert dict(other.calls) == {"list": 1}
        other.reset_stats()
        map_with(plain_client(other), rows)  # remembered in the cache: no call at all
        assert sum(other.calls.values()) == 0
    known = json.loads((cache_root() / "origins.json").read_text())
    assert known[other.base_url] == EMULATOR


def test_answers_of_a_server_that_does_not_say_what_it_is_serve_only_that_server(monkeypatch):
    monkeypatch.setattr(_origin, "origin_of_headers", lambda headers: None)
    rows = Dataset.from_dict({"text": texts(6)})
    with Emulator(delay=0, responder=echo) as first, Emulator(delay=0, responder=echo) as second:
        map_with(plain_client(first), rows)
        map_with(plain_client(second), rows)
        assert sent(first) == sent(second) == dict.fromkeys(ids_of(texts(6)), 1)
        first.reset_stats()
        map_with(plain_client(first), rows)
        assert sum(first.calls.values()) == 0
    known = json.loads((cache_root() / "origins.json").read_text())
    assert known[first.base_url] == f"url:{first.base_url}"


class _Server:
    """What resolve_origin sees of a backend: a URL, the client's headers, one answer's."""

    def __init__(self, url, headers=None, error=None):
        self.base_url, self.headers, self.error, self.asked = url, headers or {}, error, 0

    def declared_headers(self):
        return {}

    def identify(self):
        self.asked += 1
        if self.error is not None:
            raise self.error
        return self.headers


def _resolve(server, tmp_path):
    schedule = PollSchedule(initial=0, factor=1, maximum=0, sleep=lambda s: None)
    retrying = call_retrying(schedule, Clock(sleep=lambda s: None), lambda e: False)
    return resolve_origin(server, Ledger(tmp_path / "cache"), retrying)  # type: ignore[arg-type]


def test_a_proxy_passing_the_apis_headers_on_is_the_api_and_is_asked_once(tmp_path):
    proxy = _Server("https://gateway.example.com/anthropic", {"anthropic-organization-id": "o"})
    assert _resolve(proxy, tmp_path) == ANTHROPIC
    assert _resolve(proxy, tmp_path) == ANTHROPIC
    assert proxy.asked == 1
    direct = _Server("https://api.anthropic.com")
    assert _resolve(direct, tmp_path) == ANTHROPIC and direct.asked == 0


def test_a_server_that_cannot_be_asked_is_its_url_and_is_asked_again_next_time(tmp_path):
    down = _Server("http://10.0.0.1:9", error=dsbatch.BatchAPIError("no connection"))
    assert _resolve(down, tmp_path) == "url:http://10.0.0.1:9"
    assert _resolve(down, tmp_path) == "url:http://10.0.0.1:9"
    assert down.asked == 2
    mock = _Server("http://mock.local", {"server": "nginx"})
    assert _resolve(mock, tmp_path) == "url:http://mock.local"


def _as_format_2():
    """Make the test's cache look as format 2 left it: no origins anywhere."""
    root = cache_root()
    (root / "FORMAT").write_text("2\n")
    (root / "origins.json").unlink(missing_ok=True)
    for path in root.glob("jobs/*/batches/*.json"):
        record = json.loads(path.read_text())
        record.pop("origin", None)
        record.pop("holder", None)
        record.pop("lease_until", None)
        path.write_text(json.dumps(record))
    journal = root / "journal.jsonl"
    entries = [json.loads(line) for line in journal.read_text().splitlines()]
    journal.write_text("".join(json.dumps({**e, "origin": None}) + "\n" for e in entries))


def test_the_migration_to_format_3_tags_the_emulators_batches_by_their_answers(caplog):
    def real_looking(custom_id, params):
        # Answers with the ids a real API gives, not the ones the emulator derives.
        message = {
            "id": "msg_01RealLookingMessageId",
            "type": "message",
            "role": "assistant",
            "model": MODEL,
            "content": [{"type": "text", "text": echo(custom_id, params)}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 3, "output_tokens": 4},
        }
        return {"type": "succeeded", "message": message}

    made_here, made_there = texts(5, "emulator"), texts(4, "api")
    with Emulator(delay=0, responder=echo) as emu, Emulator(responder=real_looking) as real:
        run(Dataset.from_dict({"text": made_here}), emu)
        run(Dataset.from_dict({"text": made_there}), real)
        _as_format_2()
        emu.reset_stats()
        out = run(Dataset.from_dict({"text": made_here + made_there}), emu)
    assert list(out["response"]) == answers(made_here + made_there)
    # The emulator's batch still serves it; the other is taken for the API's: sent again.
    assert sent(emu) == dict.fromkeys(ids_of(made_there), 1)
    assert (cache_root() / "FORMAT").read_text().strip() == "3"
    assert "1 anthropic, 1 emulator" in caplog.text
