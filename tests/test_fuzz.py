"""The fuzz bench, short: damaged files of every container among undamaged ones."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow


def test_damaged_files_each_end_as_a_clear_row_and_leave_the_others_unchanged(tmp_path):
    done = subprocess.run([sys.executable, "bench/fuzz.py", "--files", "45", "--seed", "7", "--work", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    out = done.stdout
    for line in ("damaged files without a row: 0", "rows without a clear outcome: 0",
                 "crashes (a shard transcribed twice): 0", "hangs (a file at its time limit): 0"):
        assert line in out, out
    assert re.search(r"undamaged files whose transcript changed: 0 of 28\b", out), out
    counts = dict(re.findall(r"^  (\w[\w -]*?)\s+(\d+)$", out.split("failed, by error type:")[1], re.M))
    assert {"empty_file", "decode_error", "not_a_file"} <= set(counts), out
    assert "Traceback" not in done.stderr
