"""The GPU worker lowers its CPU priority without lowering its neighbours'."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
AUTOGROUP = Path("/proc/self/autogroup")

LOWER_AND_REPORT = """
import os, django
django.setup()
from inference.worker import cpu_priority_lower
cpu_priority_lower(7)
cpu_priority_lower(3)  # never raises it again: nice only goes up
print(os.nice(0))
"""


@pytest.mark.skipif(not AUTOGROUP.exists(), reason="Linux with session autogroups")
def test_a_worker_sharing_a_session_nices_itself_and_leaves_the_session_alone() -> None:
    before = AUTOGROUP.read_text()
    # Started as `make run` starts it: in this (the test's) session, not a session of its own.
    done = subprocess.run(
        [sys.executable, "-c", LOWER_AND_REPORT],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "batchsite.settings"},
        capture_output=True,
        text=True,
        check=True,
    )

    assert done.stdout.split()[-1] == "7"
    assert AUTOGROUP.read_text() == before, "the session's other processes keep their priority"
