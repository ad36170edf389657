"""gunicorn's settings for the web process: ``gunicorn -c batchsite/gunicorn.py batchsite.wsgi``.

Threads in a few processes: most of a request's time is the database and the network, and
threads keep each process's connections (CONN_MAX_AGE) and its verified keys warm. Nothing a
request needs lives only in one process (rate limits count in the database), so any number of
processes, on any number of machines, can serve the same API.

gunicorn runs this file in the master, before it forks the workers (and after it has put the
working directory on ``sys.path``, so ``batchsite`` imports here).
"""

from __future__ import annotations

import logging
import logging.handlers
import os
from pathlib import Path
from typing import Any

# gunicorn ships no type information.
from gunicorn.glogging import Logger  # type: ignore[import-untyped]

from batchsite.logging import JsonFormatter

bind = [os.environ.get("WEB_BIND", "127.0.0.1:8000")]
workers = int(os.environ.get("WEB_WORKERS", "2"))
worker_class = "gthread"
threads = int(os.environ.get("WEB_THREADS", "8"))
# Clients such as the bench's keep 32 connections open at once; a short queue drops their SYNs.
backlog = 2048
# Pollers and SDK clients reuse their connections; a load balancer in front keeps them longer.
keepalive = 75
# An upload of a 200 MB input file streams through one request.
timeout = 300
# Every request is already logged as JSON by batchsite.middleware (with its request id).
accesslog = None

# --- Metrics from every worker (prometheus_client's multiprocess mode) -------------------------
# Each worker writes its HTTP counters to files here and /metrics sums them all, whichever worker
# answers the scrape. prometheus_client picks its storage when it is first imported, which the
# workers do after the fork: set here, in the master, the variable reaches every one of them.
# Nothing in the master may import prometheus_client before this line.
# settings.DATA_DIR, read the same way: the master does not load Django's settings.
_DATA_DIR = Path(
    os.environ.get("BATCH_DATA_DIR", str(Path(__file__).resolve().parent.parent / "var"))
).resolve()
METRICS_DIR = Path(os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(_DATA_DIR / "prometheus")))


def on_starting(server: Any) -> None:
    """Master start: a previous run's counts must not be added to this run's."""
    METRICS_DIR.mkdir(parents=True, exist_ok=True)
    # Only prometheus_client's files: the operator's PROMETHEUS_MULTIPROC_DIR may hold others.
    for stale in METRICS_DIR.glob("*.db"):
        stale.unlink()


def child_exit(server: Any, worker: Any) -> None:
    """A worker has gone: its live gauges go with it (its counters stay in the sums)."""
    # Imported here, not at the top, so that nothing imports prometheus_client before the
    # environment variable above is set.
    from prometheus_client import multiprocess

    # prometheus_client leaves mark_process_dead unannotated.
    multiprocess.mark_process_dead(worker.pid, str(METRICS_DIR))  # type: ignore[no-untyped-call]


# --- gunicorn's own log lines as JSON -----------------------------------------------------------


# Logger is untyped (gunicorn ships no type information).
class JsonLogger(Logger):  # type: ignore[misc]
    """gunicorn's logger, its lines formatted like all of ours (batchsite.logging.JsonFormatter).

    Its handlers stay as gunicorn builds them from the settings (stderr or --error-logfile;
    syslog keeps its own format, which syslog daemons parse). A subclass rather than
    ``logconfig_dict``: any log config turns on gunicorn's access-log work for every request,
    which batchsite.middleware does already.
    """

    def setup(self, cfg: Any) -> None:
        # Runs at start and on every reload (SIGHUP), each time with new handlers.
        super().setup(cfg)
        formatter = JsonFormatter()
        handler: logging.Handler
        for handler in self.error_log.handlers:
            if not isinstance(handler, logging.handlers.SysLogHandler):
                handler.setFormatter(formatter)


logger_class = JsonLogger
