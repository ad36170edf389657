"""Real processes for end-to-end tests: django-q2 clusters (CPU and GPU) on the test database.

The clusters are `python manage.py qcluster` subprocesses, exactly as operators run them, pointed
at the test database and the test's file storage through the environment.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connection

from inference.bench import group_stop, log_tail

ROOT = Path(__file__).resolve().parents[2]


def database_url_for_subprocesses() -> str:
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    password = f":{db['PASSWORD']}" if db["PASSWORD"] else ""
    port = f":{db['PORT']}" if db["PORT"] else ""
    return f"postgres://{db['USER']}{password}@{db['HOST'] or '127.0.0.1'}{port}/{db['NAME']}"


class Cluster:
    """One qcluster process group; ``kill()`` is a SIGKILL of the whole group (a crash)."""

    # What runs: manage.py qcluster, or a variant of it (tests.reliability.faulty_qcluster).
    command: tuple[str, ...] = ("manage.py", "qcluster")

    def __init__(self, name: str, env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self.log = log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, *self.command],
            cwd=ROOT,
            env={**env, "Q_CLUSTER_NAME": name},
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def _stopping(self) -> bool:
        return "stopping cluster processes" in log_tail(self.log_path, 20_000)

    def stop(self) -> None:
        """Stop as an operator's Ctrl-C would, the main process first (see ``group_stop``)."""
        group_stop(self.process, self._stopping, grace=20)
        self.log.close()

    def output(self) -> str:
        return log_tail(self.log_path, 5000)


def subprocess_env(files: Path, **extra: str) -> dict[str, str]:
    """The environment of a cluster on the test database and the test's file storage."""
    return {
        **os.environ,
        "DATABASE_URL": database_url_for_subprocesses(),
        "BATCH_FILES_DIR": str(files),
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "WORKER_HEARTBEAT_SECONDS": "1",
        "BATCH_LEASE_SECONDS": "20",
        "Q_POLL_SECONDS": "0.1",
        "DJANGO_SECRET_KEY": settings.SECRET_KEY,
        "BATCH_DATA_DIR": str(settings.DATA_DIR),
        **extra,
    }


@pytest.fixture
def cluster_env(tmp_path: Path, settings: Any) -> dict[str, str]:
    files = tmp_path / "files"
    files.mkdir()
    settings.MEDIA_ROOT = str(files)
    return subprocess_env(files)


@pytest.fixture
def start_cluster(cluster_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    started: list[Cluster] = []

    def start(name: str, **extra_env: str) -> Cluster:
        log = tmp_path / f"{name}-{len(started)}.log"
        cluster = Cluster(name, {**cluster_env, **extra_env}, log)
        started.append(cluster)
        return cluster

    yield start
    for cluster in started:
        cluster.stop()


def wait_for(
    predicate: Callable[[], Any],
    *,
    timeout: float,
    what: str,
    # An empty tuple, as a default must not be a shared list; it is only iterated.
    clusters: list[Cluster] = (),  # type: ignore[assignment]
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    logs = "\n".join(f"--- {c.name} ---\n{c.output()}" for c in clusters)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{logs}")


__all__ = ["Cluster", "database_url_for_subprocesses", "subprocess_env", "wait_for"]
