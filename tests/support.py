"""What the end-to-end tests of dsbatch.map share."""

from __future__ import annotations

import itertools
import json
import os
from collections import Counter
from pathlib import Path

import xxhash
from datasets import Dataset

import dsbatch

MODEL = "claude-haiku-4-5"


def text_of(content):
    """The text of a message's content, a string or a list of blocks."""
    if isinstance(content, str):
        return content
    return "|".join(block["text"] for block in content if block.get("type") == "text")


def echo(custom_id, params):
    """Answer with the prompt itself, so each row's answer proves which request it came from."""
    return "echo: " + text_of(params["messages"][-1]["content"])


def answers(values):
    """What ``echo`` answers to each of these texts."""
    return [f"echo: {v}" for v in values]


def request_for(text: str) -> dict:
    """The request dsbatch makes of a row answered by ``prompt`` under ``run``, with its
    documented custom_id: ``dsb_`` + xxh3-128 of the canonical JSON of the params."""
    params = {"max_tokens": 256, "messages": [{"content": text, "role": "user"}], "model": MODEL}
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return {"custom_id": "dsb_" + xxhash.xxh3_128_hexdigest(canonical.encode()), "params": params}


def ids_of(values) -> list[str]:
    """The custom_id of each text's request."""
    return [request_for(v)["custom_id"] for v in values]


def prompt(row):
    return row["text"]


def _client(emu, retries):
    """One SDK client per emulator and retry setting: building one loads the CA bundle (0.15 s)."""
    clients = emu.__dict__.setdefault("_test_clients", {})
    if retries not in clients:
        clients[retries] = emu.client() if retries is None else emu.client(max_retries=retries)
    return clients[retries]


def virtual(emu, initial=60.0, **kwargs):
    """A poll schedule on the emulator's virtual clock: waiting advances it, nothing sleeps."""
    return dsbatch.PollSchedule(initial=initial, sleep=emu.advance, clock=emu.now, **kwargs)


def run(ds, emu, fn=prompt, *, wait=None, retries=None, **kwargs):
    """dsbatch.map against ``emu`` without a progress bar.

    Polls at once, or every ``wait`` seconds of the emulator's virtual clock; ``retries`` sets
    the SDK client's own retries (``0`` shows every fault to dsbatch).
    """
    kwargs.setdefault(
        "poll_interval",
        0 if wait is None else virtual(emu, wait),
    )
    kwargs.setdefault("progress", False)
    kwargs.setdefault("model", MODEL)
    kwargs.setdefault("max_tokens", 256)
    client = _client(emu, retries)
    return dsbatch.map(ds, fn, client=client, **kwargs)


def sent(emu, batch_id=None) -> Counter[str]:
    """custom_id -> how many times it was received in an accepted create (of one batch)."""
    return Counter(c for b, c in emu.received if batch_id is None or b == batch_id)


def cache_root() -> Path:
    """The test's cache (the autouse fixture points DSBATCH_CACHE at a temporary folder)."""
    return Path(os.environ["DSBATCH_CACHE"])


def job_dirs() -> list[Path]:
    return sorted(p for p in (cache_root() / "jobs").iterdir() if p.is_dir())


def records(job: Path) -> list[dict]:
    """The batch records of a job folder, as stored."""
    return [json.loads(p.read_bytes()) for p in sorted((job / "batches").glob("*.json"))]


def observe_queue(emu, durations=None) -> list[int]:
    """The requests in the emulator's processing queue right after each create (the queue only
    grows at a create, so the largest of these is the largest it ever held). ``durations``: how
    long each new batch takes, in turn."""
    store = emu._store
    create = store.create
    cycle = itertools.cycle(durations) if durations else None
    seen: list[int] = []

    def observed(requests, **kwargs):
        if cycle is not None:
            emu.delay = next(cycle)
        batch = create(requests, **kwargs)
        seen.append(sum(b["request_counts"]["processing"] for b in emu.batches.values()))
        return batch

    store.create = observed
    return seen


def without_provenance(features):
    """The features without the ids ``dsbatch.map`` stamps its steps' provenance in."""
    from datasets import Features

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "id"}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return Features.from_dict(strip(features.to_dict()))


def submit(emu, rows, **kwargs):
    """dsbatch.map of these texts with ``wait=False``: the job, its batches created."""
    return dsbatch.map(
        Dataset.from_dict({"text": rows}),
        prompt,
        model=MODEL,
        max_tokens=256,
        client=emu.client(),
        wait=False,
        progress=False,
        poll_interval=virtual(emu, 60),
        **kwargs,
    )
