"""batchsite/gunicorn.py: metrics from every worker, and gunicorn's own lines as JSON."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from unittest import mock

import pytest
from gunicorn.config import Config  # type: ignore[import-untyped]  # gunicorn ships no types

from batchsite.logging import JsonFormatter

CONFIG_FILE = Path(__file__).resolve().parents[2] / "batchsite" / "gunicorn.py"


def gunicorn_config(**environ: str) -> ModuleType:
    """The config file run as gunicorn runs it, in a master started with ``environ`` added."""
    os.environ.update(environ)
    spec = importlib.util.spec_from_file_location("gunicorn_config_under_test", CONFIG_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def environ() -> Iterator[None]:
    # The config file sets variables for the workers it forks: none may outlive the test (a
    # PROMETHEUS_MULTIPROC_DIR left behind would turn the other tests' /metrics multiprocess).
    with mock.patch.dict(os.environ):
        yield


def test_it_keeps_metrics_under_the_data_dir_by_default(environ: None, tmp_path: Path) -> None:
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    os.environ["BATCH_DATA_DIR"] = str(tmp_path)
    config = gunicorn_config()
    assert tmp_path / "prometheus" == config.METRICS_DIR
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(tmp_path / "prometheus")


def test_it_keeps_the_operators_metrics_dir(environ: None, tmp_path: Path) -> None:
    config = gunicorn_config(PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "mine"))
    assert tmp_path / "mine" == config.METRICS_DIR
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(tmp_path / "mine")


def test_the_master_starts_with_no_counts_from_a_previous_run(
    environ: None, tmp_path: Path
) -> None:
    config = gunicorn_config(PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    (tmp_path / "counter_111.db").write_bytes(b"old")
    (tmp_path / "histogram_111.db").write_bytes(b"old")
    (tmp_path / "README").write_text("the operator's")

    config.on_starting(SimpleNamespace())

    assert sorted(p.name for p in tmp_path.iterdir()) == ["README"]


def test_a_dead_workers_live_gauges_go_and_its_counters_stay(environ: None, tmp_path: Path) -> None:
    config = gunicorn_config(PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    config.on_starting(SimpleNamespace())
    for name in ("counter_4242.db", "gauge_livesum_4242.db", "gauge_liveall_4243.db"):
        (tmp_path / name).write_bytes(b"")

    config.child_exit(SimpleNamespace(), SimpleNamespace(pid=4242))

    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "counter_4242.db",
        "gauge_liveall_4243.db",
    ]


def test_gunicorns_own_lines_are_json(
    environ: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = gunicorn_config(PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    error_log = logging.getLogger("gunicorn.error")
    saved = (error_log.handlers[:], error_log.propagate, error_log.level)
    try:
        cfg = Config()
        for name in ("logger_class", "accesslog"):
            cfg.set(name, getattr(config, name))
        log = cfg.logger_class(cfg)
        log.info("Booting worker with pid: %s", 4242)

        assert all(isinstance(h.formatter, JsonFormatter) for h in error_log.handlers)
        [line] = capsys.readouterr().err.splitlines()
        record = json.loads(line)
        assert record["logger"] == "gunicorn.error"
        assert record["level"] == "INFO"
        assert record["message"] == "Booting worker with pid: 4242"
        assert "timestamp" in record
        assert not log.access_log_enabled, "requests are logged by batchsite.middleware"
    finally:
        error_log.handlers[:], error_log.propagate, error_log.level = saved
