"""The chaos bench, short: a few minutes of faults of every kind on a real local cluster
with its storage on S3 behind a fault-injecting proxy."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow


def test_a_short_chaos_run_loses_duplicates_and_changes_nothing(tmp_path):
    done = subprocess.run([sys.executable, "bench/chaos.py", "--files", "50", "--minutes", "1.5", "--seed", "3",
                           "--work", str(tmp_path), "--port-base", "24000"], capture_output=True, text=True, cwd=ROOT, timeout=1500)
    out = done.stdout
    assert done.returncode == 0, out[-5000:] + done.stderr[-3000:]
    for line in ("files lost: 0", "files duplicated: 0", "transcripts changed against the clean run: 0 of 50",
                 "verify --reparse: exit 0"):
        assert line in out, out
    injected = re.search(r"in all\s+(\d+) of (\d+) kinds", out)
    assert injected and int(injected.group(1)) >= 10 and int(injected.group(2)) >= 6, out
    assert re.search(r"driver killed\s+1\b", out), out
