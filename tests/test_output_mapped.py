"""The new columns are a memory-mapped table of the job's output file, as ``datasets`` maps its
own cache files: pickling the output, ``map(num_proc=)`` and ``save_to_disk`` read the file and
hold no copy of the columns; the fingerprint stays the answers' own."""

from __future__ import annotations

import pickle

from datasets import Dataset, load_from_disk
from datasets.table import MemoryMappedTable
from support import answers, cache_root, run


def texts(n: int) -> list[str]:
    return [f"text {i}" for i in range(n)]


LONG = "x" * 2_000  # each answer holds it: a copy of the column would show in a pickle


def _from_disk(tmp_path, rows):
    Dataset.from_dict({"text": rows}).save_to_disk(str(tmp_path / "in"))
    return load_from_disk(str(tmp_path / "in"))


def _mapped_files(ds: Dataset) -> list[str]:
    """The files of the cache the dataset maps (not its input's)."""
    return [
        block.path
        for row in ds._data.blocks
        for block in row
        if isinstance(block, MemoryMappedTable) and block.path.startswith(str(cache_root()))
    ]


def test_the_new_columns_map_the_jobs_output_file(emu, tmp_path):
    rows = [f"{t} {LONG}" for t in texts(50)]
    out = run(_from_disk(tmp_path, rows), emu)
    (output,) = cache_root().glob("jobs/*/output/data/*.arrow")
    assert _mapped_files(out) == [str(output)]
    responses = list(out["response"])
    assert [r[:12] for r in responses] == [a[:12] for a in answers(rows)]
    column_bytes = sum(len(r) for r in responses)
    data = pickle.dumps(out)
    assert column_bytes > 40_000 and len(data) < column_bytes / 10  # no copy of the column
    again = pickle.loads(data)
    assert list(again["response"]) == responses
    assert again._fingerprint == out._fingerprint


def test_a_rerun_served_from_the_cache_maps_the_same_file(emu, tmp_path):
    rows = texts(20)
    ds = _from_disk(tmp_path, rows)
    first = run(ds, emu)
    second = run(ds, emu)
    rendered = run(ds, emu, load_from_cache_file=False)
    assert _mapped_files(first) == _mapped_files(second) == _mapped_files(rendered)
    assert first._fingerprint == second._fingerprint == rendered._fingerprint
    assert emu.calls["create"] == 1


def test_save_to_disk_and_map_with_processes_read_the_mapped_columns(emu, tmp_path):
    rows = texts(40)
    out = run(_from_disk(tmp_path, rows), emu)
    out.save_to_disk(str(tmp_path / "out"))
    loaded = load_from_disk(str(tmp_path / "out"))
    assert loaded.to_list() == out.to_list()
    lengths = out.map(lambda row: {"n": len(row["response"])}, num_proc=2)
    assert lengths["n"] == [len(a) for a in answers(rows)]


def test_an_answer_that_changes_writes_a_new_file_and_the_old_output_still_reads(emu, tmp_path):
    rows = texts(6)
    ds = _from_disk(tmp_path, rows)
    first = run(ds, emu)
    before = list(first["response"])
    other = run(ds, emu, output_column="answer")  # other columns: another output file
    (output,) = cache_root().glob("jobs/*/output/data/*.arrow")
    assert _mapped_files(other) == [str(output)] and _mapped_files(first) != [str(output)]
    assert list(first["response"]) == before  # its file was removed, its mapping still reads
    assert other["answer"] == before


def test_a_split_written_a_slice_of_rows_at_a_time_reads_back_as_one(emu, tmp_path, monkeypatch):
    import pyarrow as pa

    import dsbatch._collect as collect_module

    rows = [texts(7)[i % 7] for i in range(30)]  # repeats: answers taken, not in order
    ds = _from_disk(tmp_path, rows)
    whole = run(ds, emu, output_column="a")
    monkeypatch.setattr(collect_module, "OUTPUT_SLICE_ROWS", 4)
    sliced = run(ds, emu, output_column="b", load_from_cache_file=False)
    (output,) = cache_root().glob("jobs/*/output/data/*.arrow")
    with pa.memory_map(str(output)) as source:
        batches = list(pa.ipc.open_stream(source))
    assert [b.num_rows for b in batches] == [4] * 7 + [2]
    assert sliced["b"] == whole["a"] == answers(rows)
    assert sliced["dsbatch"] == whole["dsbatch"]
    assert _mapped_files(sliced) == [str(output)]
    # Served again from the same file, and the rows' answers the same.
    again = run(ds, emu, output_column="b")
    assert _mapped_files(again) == [str(output)] and again["b"] == answers(rows)
    assert emu.calls["create"] == 1
