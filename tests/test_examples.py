"""Every script in examples/ runs, as a user would run it, on the embedded emulator: no key, a
cache of its own, and the lines that show it did what its guide says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

# script -> (its arguments, lines its output must hold). Figures are the emulator's and fixed.
EXPECTED: dict[str, tuple[list[str], list[str]]] = {
    "summarize.py": ([], ["{'succeeded': 3}; "]),
    "label.py": (["--rows", "40"], ["40 rows, structured_output='native'", "a parse_error row"]),
    "training_data.py": ([], ["loaded back, 9 rows; row 0's conversation:", "sample 0:"]),
    "prompt_caching.py": ([], ["4 rows: 1 wrote the cache, 3 read it"]),
    "images.py": ([], ["3 images described; the image column is still an Image() column"]),
    "splits.py": ([], ["train: 4 rows", "test: 2 rows", "6 rows across 2 splits, 5 distinct"]),
    "preview.py": ([], ["plan: 4 to send, 2 already answered", "batch: 6 rows, 6 answered"]),
    "submit_collect.py": ([], [": 4 requests in flight", ": 4 rows, state done"]),
    "budget.py": (
        [],
        [
            "20 rows, 20 distinct requests: 20 to send in 1 batch",
            "refused: up to $0.0051 is over budget_usd=$0.001",
            "ran 20 rows for $",
        ],
    ),
    "chain.py": (
        [],
        [
            "columns: ['product', 'response', 'dsbatch', 'verdict', 'score', 'reason', 'judge']",
            "3 drafts written and judged",
        ],
    ),
}
# Run in one fresh interpreter, one script after the other, as `python examples/x.py args` would
# (runpy, as __main__, its own argv, cache, working folder and stdout): importing datasets and
# the SDK takes most of a script's few seconds, and is paid once instead of ten times.
RUNNER = """
import contextlib, io, json, os, runpy, sys, traceback
examples, tmp, plan = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
report = {}
for script, args in plan.items():
    here = os.path.join(tmp, script)
    os.makedirs(here)
    os.chdir(here)
    os.environ["DSBATCH_CACHE"] = os.path.join(here, "cache")
    sys.argv = [os.path.join(examples, script), *args]
    out, code = io.StringIO(), 0
    with contextlib.redirect_stdout(out):
        try:
            runpy.run_path(sys.argv[0], run_name="__main__")
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            traceback.print_exc(file=out)
            code = 1
    report[script] = {"code": code, "stdout": out.getvalue()}
with open(os.path.join(tmp, "report.json"), "w") as f:
    json.dump(report, f)
"""


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> dict[str, dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("examples")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    env.update(
        ANTHROPIC_CONFIG_DIR=str(tmp / "anthropic-config"),  # no profile of the developer's
        HF_HOME=str(tmp / "hf"),
        # The checkout's dsbatch, whatever the environment has installed.
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
    )
    plan = {script: args for script, (args, _) in EXPECTED.items()}
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, str(EXAMPLES), str(tmp), json.dumps(plan)],
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, dict[str, Any]] = json.loads((tmp / "report.json").read_text())
    return report


def test_every_example_is_run():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_example_runs_on_the_emulator(outputs, script):
    code, stdout = outputs[script]["code"], outputs[script]["stdout"]
    assert code == 0, f"{script} exited {code}:\n{stdout}"
    lines = stdout.splitlines()
    assert lines[0].startswith("no ANTHROPIC_API_KEY: the local emulator")
    for expected in EXPECTED[script][1]:
        assert expected in stdout, f"{script} did not print {expected!r}:\n{stdout}"
