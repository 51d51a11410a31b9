"""Requests are cut into batches under both limits, with the exact body the API receives."""

from __future__ import annotations

import json

import pytest

from dsbatch import RequestTooLargeError
from dsbatch._plan import batch_body, check_sizes, chunk_requests


def bodies_of(n, size=10):
    return {f"dsb_{i:04d}": json.dumps({"p": "x" * size, "i": i}).encode() for i in range(n)}


def test_the_body_is_the_json_the_api_expects_and_its_size_is_exact():
    bodies = bodies_of(7)
    plans = list(chunk_requests(list(bodies), bodies))
    assert len(plans) == 1
    body = batch_body(plans[0].custom_ids, bodies)
    assert len(body) == plans[0].nbytes
    decoded = json.loads(body)
    assert [r["custom_id"] for r in decoded["requests"]] == list(bodies)
    assert decoded["requests"][3]["params"] == {"p": "x" * 10, "i": 3}


def test_batches_respect_the_request_count_limit():
    bodies = bodies_of(25)
    plans = list(chunk_requests(list(bodies), bodies, max_requests=10))
    assert [len(p.custom_ids) for p in plans] == [10, 10, 5]
    assert [c for p in plans for c in p.custom_ids] == list(bodies)


def test_batches_respect_the_byte_limit_exactly():
    bodies = bodies_of(50, size=100)
    limit = 1000
    plans = list(chunk_requests(list(bodies), bodies, max_bytes=limit))
    assert len(plans) > 1
    for plan in plans:
        assert plan.nbytes == len(batch_body(plan.custom_ids, bodies)) <= limit
    # No batch could have taken the next request too.
    for plan, nxt in zip(plans, plans[1:]):
        assert len(batch_body((*plan.custom_ids, nxt.custom_ids[0]), bodies)) > limit


def test_a_request_over_the_byte_limit_alone_is_an_error_naming_its_row():
    bodies = {"dsb_small": b'{"a":1}', "dsb_huge": b'{"a":"' + b"x" * 500 + b'"}'}
    with pytest.raises(RequestTooLargeError, match="row 7 of split 'test'.*dsb_huge"):
        list(
            chunk_requests(list(bodies), bodies, max_bytes=300, first_row={"dsb_huge": ("test", 7)})
        )


def _one_at_a_time(ids, bodies, max_requests, max_bytes):
    """The cut as a request-at-a-time loop makes it (what chunk_requests must equal)."""
    plans, current, size = [], [], 15  # {"requests":[ and ]}
    for custom_id in ids:
        item = len(custom_id) + len(bodies[custom_id]) + 26
        sep = 1 if current else 0
        if current and (len(current) >= max_requests or size + sep + item > max_bytes):
            plans.append((tuple(current), size))
            current, size, sep = [], 15, 0
        current.append(custom_id)
        size += sep + item
    return plans + ([(tuple(current), size)] if current else [])


@pytest.mark.parametrize("seed", range(6))
def test_batches_are_cut_as_a_request_at_a_time_would_cut_them(seed):
    import random

    rng = random.Random(seed)
    bodies = {f"dsb_{i:05d}{'_s2' * (i % 3 == 0)}": b"x" * rng.randint(1, 400) for i in range(500)}
    ids = list(bodies)
    rng.shuffle(ids)
    max_requests, max_bytes = rng.choice([1, 7, 50, 1000]), rng.choice([460, 2_000, 30_000])
    plans = list(chunk_requests(ids, bodies, max_requests=max_requests, max_bytes=max_bytes))
    assert [(p.custom_ids, p.nbytes) for p in plans] == _one_at_a_time(
        ids, bodies, max_requests, max_bytes
    )
    assert all(p.nbytes == len(batch_body(p.custom_ids, bodies)) <= max_bytes for p in plans)


def test_a_store_whose_largest_body_fits_is_not_read_body_by_body():
    from dsbatch._bodies import Bodies

    store = Bodies()
    for i in range(10):
        store[f"dsb_{i}"] = b"y" * (100 + i)
    assert store.largest == 109
    check_sizes(store, max_bytes=15 + 5 + 109 + 26)  # the largest, with the longest id: fits
    with pytest.raises(RequestTooLargeError, match="custom_id dsb_9"):
        check_sizes(store, max_bytes=15 + 5 + 109 + 25)


def test_a_job_s_fingerprint_is_the_one_every_earlier_dsbatch_gave():
    # A fingerprint is where a job lives in users' caches: the same rows must give the same
    # one, however it is computed. The reference is the id-by-id hashing it was first written
    # as; the pinned value holds it to the same bytes across changes.
    import xxhash

    from dsbatch._plan import job_fingerprint

    def reference(splits, origin, samples=1):
        h = xxhash.xxh3_128(b"dsbatch-job-3\x00" + origin.encode())
        if samples != 1:
            h.update(b"\x00samples\x00" + str(samples).encode())
        for split, ids in splits.items():
            h.update(b"\x00split\x00" + split.encode() + b"\x00")
            for custom_id in ids:
                h.update(b"\x01" + (custom_id.encode() if custom_id else b"-"))
        return h.hexdigest()

    cases = [
        ({"train": ["dsb_a", None, "dsb_b", "dsb_a"], "test": ["dsb_c"]}, "o", 1),
        ({"train": ["dsb_a", "", "dsb_é"], "empty": []}, "http://127.0.0.1:1", 3),
        ({"only": [None, None]}, "", 1),
        ({}, "o", 1),
    ]
    prints = [job_fingerprint(splits, origin, samples) for splits, origin, samples in cases]
    assert prints == [reference(*case) for case in cases]
    assert len(set(prints)) == len(prints)
    assert prints[0] == "0fa4aae08e02b081cd2082b963cb93df"  # by the code before this one
