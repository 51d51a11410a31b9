"""Submit a job, quit, and collect its result later, in another process, by its fingerprint.

python examples/submit_collect.py submit        # creates the batches, prints the fingerprint
python examples/submit_collect.py collect FP    # any time later: waits if needed, then the rows

Both need ANTHROPIC_API_KEY (or ANTHROPIC_BASE_URL pointing at `dsbatch emulator`, which outlives
a process). Without a key, the embedded emulator lives only in this process, so the script runs
both halves here, on one emulator and one cache: submit, then collect from the fingerprint alone.
"""

from __future__ import annotations

import os
import sys

from datasets import Dataset

import dsbatch
from dsbatch.testing import Emulator

ds = Dataset.from_dict({"city": ["Lisbon", "Oslo", "Nairobi", "Lima"]})


def prompt(row):
    return f"In one sentence, what is {row['city']} known for?"


def submit(client=None) -> str:
    job = dsbatch.map(
        ds, prompt, model="claude-haiku-4-5", max_tokens=80, client=client, wait=False
    )
    status = job.status()
    print(f"submitted job {job.fingerprint}: {status.counts['in_flight']} requests in flight")
    print(f"collect it later: python examples/submit_collect.py collect {job.fingerprint[:12]}")
    return job.fingerprint


def collect(fingerprint: str, client=None, poll_interval=None) -> None:
    # No dataset, no prompt function: the job kept what it needs in the cache.
    job = dsbatch.Job.load(fingerprint, client=client, poll_interval=poll_interval)
    out = job.result()
    for row in out:
        print(f"  {row['city']}: {row['response']!r}")
    print(f"collected job {fingerprint[:12]}: {out.num_rows} rows, state {job.status().state}")


def main() -> None:
    if os.environ.get("ANTHROPIC_API_KEY"):
        if sys.argv[1:2] == ["submit"]:
            submit()
        elif sys.argv[1:2] == ["collect"] and len(sys.argv) == 3:
            collect(sys.argv[2])
        else:
            sys.exit(__doc__)
        return
    print("no ANTHROPIC_API_KEY: the local emulator, both halves in this process")
    # Each batch takes an hour of emulator time; its clock moves only when dsbatch waits on it.
    with Emulator(delay=3600) as emu:
        fingerprint = submit(emu.client())
        collect(fingerprint, emu.client(), dsbatch.PollSchedule(sleep=emu.advance, clock=emu.now))


if __name__ == "__main__":
    main()
