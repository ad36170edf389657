"""manage.py bench: the quick run end to end (shape only), and the pieces it is built from."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from inference import bench

ROOT = Path(__file__).resolve().parents[2]


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def test_it_writes_requests_that_each_ask_for_the_same_work(tmp_path: Path) -> None:
    path = bench.requests_write(tmp_path / "in.jsonl", 5, model="m", prefix="p")

    lines = [json.loads(raw) for raw in path.read_text().splitlines()]

    assert [line["custom_id"] for line in lines] == [f"p-{i}" for i in range(5)]
    assert {line["url"] for line in lines} == {bench.CHAT}
    assert all(line["body"]["max_tokens"] == bench.OUTPUT_TOKENS for line in lines)
    assert all(line["body"]["ignore_eos"] is True for line in lines)


def test_it_pads_ingest_lines_to_about_the_size_asked(tmp_path: Path) -> None:
    path = bench.requests_write(tmp_path / "big.jsonl", 10, model="m", prefix="p", line_bytes=4000)

    sizes = [len(raw) for raw in path.read_bytes().splitlines()]

    assert all(3_950 <= size <= 4_050 for size in sizes)
    assert bench.bare_parse_seconds(path) > 0


def test_it_turns_engine_arguments_into_vllm_flags() -> None:
    flags = bench.engine_args_as_cli(
        {"max_model_len": 1024, "enforce_eager": True, "enable_chunked_prefill": False}
    )

    assert flags == [
        "--max-model-len",
        "1024",
        "--enforce-eager",
        "--no-enable-chunked-prefill",
    ]


def test_it_reports_latency_percentiles_in_milliseconds() -> None:
    result = bench.LoadResult(requests=100, seconds=2.0, latencies=[i / 1000 for i in range(100)])

    summary = result.summary()

    assert summary["requests_per_second"] == 50
    assert summary["p50_ms"] == pytest.approx(50)
    assert summary["p99_ms"] == pytest.approx(99)


class _Ok(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the bench's clients expect

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


def test_a_paced_load_keeps_its_rate_and_times_requests_from_when_they_were_due() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result = bench.http_load(
            port=server.server_address[1], path="/", key="k", clients=4, seconds=1.0, rate=40
        )
    finally:
        server.shutdown()
        server.server_close()

    assert result.errors == 0
    # 40 per second for one second: the schedule never sends more (each of the 4 clients may
    # start one request at the very end). How close it comes, and how fast the answers are,
    # depend on the machine's load: the bench measures that, a test must not.
    assert 1 <= result.requests <= 40 + 4
    assert len(result.latencies) == result.requests
    assert all(latency >= 0 for latency in result.latencies)


@pytest.mark.engine
def test_the_quick_bench_prints_every_measurement_and_ratio(tmp_path: Path) -> None:
    output = tmp_path / "results.json"
    env = {**os.environ, "BATCH_BENCH_DIR": str(tmp_path / "bench")}

    run = subprocess.run(
        [sys.executable, "manage.py", "bench", "--quick", "--json", str(output)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1_200,
        check=False,
    )

    assert run.returncode == 0, run.stderr[-5000:]
    results = json.loads(output.read_text())
    assert _positive(results["engine"]["seconds"])
    assert results["engine"]["requests"] == results["server"]["requests"]
    # --quick takes one run of each; the full bench the medians of runs taken in turn.
    assert results["engine"]["runs_seconds"] == [results["engine"]["seconds"]]
    assert results["server"]["runs_seconds"] == [results["server"]["seconds"]]
    assert results["server"]["completed"] == results["server"]["requests"]
    for key in ("seconds", "first_request_seconds"):
        assert _positive(results["server"][key])
    assert all(isinstance(v, float) for v in results["server"]["phases"].values())
    assert _positive(results["run_batch"]["seconds"])
    assert results["run_batch"]["three_batches"] is None  # skipped in quick mode
    for key in ("seconds", "upload_seconds", "bare_parse_seconds", "lines", "bytes"):
        assert _positive(results["ingest"][key])
    for endpoint in ("health", "batch", "batch_half_load", "health_at_that_rate"):
        stats = results["api"][endpoint]
        assert stats["errors"] == 0
        for key in ("requests_per_second", "p50_ms", "p99_ms"):
            assert _positive(stats[key])
    for size in ("small", "large"):
        for process in ("web", "worker", "worker_vllm"):
            assert _positive(results["memory"][size][process])
    ratios = results["ratios"]
    for key in ("server_over_engine", "server_over_run_batch", "ingest_over_bare_parse"):
        assert _positive(ratios[key])
    assert ratios["three_batches_server_over_run_batch"] is None
    assert {verdict["met"] for verdict in results["targets"]} <= {True, False, None}
    assert "| server / engine at N |" in run.stdout
