"""The speed benchmark behind ``manage.py bench``: the server beside vLLM itself, in one run.

Every figure is taken on the same model and the same requests, and no two are taken at once
(on a two-core machine, two measurements at once measure neither):

* **engine**: a bare ``vllm.LLM.chat`` over the requests, after a warm-up, in a subprocess
  whose engine is gone before the server's turn;
* **server**: the requests as a JSONL file through the real path (gunicorn, as ``make run``
  starts it, and both ``qcluster`` processes), from ``POST /v1/files`` to ``completed``, on a
  warm worker; and the time from ``POST /v1/batches`` until an idle worker runs the batch's
  first request;
* **run-batch**: ``python -m vllm.entrypoints.openai.run_batch`` on the same file, model load
  included, and three back-to-back 1,000-request batches against three such runs;
* **ingest**: upload and validation of a large input file beside a bare ``json.loads`` of it;
* **api**: ``GET /v1/batches/{id}`` against ``GET /health`` under 32 concurrent clients while a
  batch runs;
* **memory**: web and worker peak RSS for a small and a large batch.

The bench never touches the operator's data: ``manage.py bench`` re-runs itself (the
"orchestrator") against a fresh SQLite database and file store under ``var/bench/`` (or the
database given with ``--database-url``), and starts the server's processes there.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.client import HTTPConnection, RemoteDisconnected
from pathlib import Path
from typing import IO, Any

from django.conf import settings

# Everything the bench writes lives here; tests point it elsewhere.
BENCH_DIR = Path(os.environ.get("BATCH_BENCH_DIR", "") or Path(settings.BASE_DIR) / "var" / "bench")
MANAGE_PY = Path(settings.BASE_DIR) / "manage.py"
# The web server as `make run` starts it.
GUNICORN_CONFIG = Path(settings.BASE_DIR) / "batchsite" / "gunicorn.py"
CHAT = "/v1/chat/completions"
OUTPUT_TOKENS = 32
# The orchestrator's own database is a fresh SQLite file here unless --database-url is given.
DATA_DIR = BENCH_DIR / "data"
WORK_DIR = BENCH_DIR / "work"
TINY_MODEL_DIR = BENCH_DIR / "model"
TINY_MODEL_NAME = "bench-tiny"
TINY_ENGINE_ARGS: dict[str, Any] = {"max_model_len": 1024}
ROLE_ENV = "BATCH_BENCH_ROLE"
STATUS_TERMINAL = ("completed", "failed", "expired", "cancelled")


@dataclass(frozen=True)
class Sizes:
    """How big each part is: the full run, or ``--quick``'s small version of it."""

    requests: int
    warmup: int
    # Engine and server runs, taken in turn: the machine's speed drifts between runs (here, a
    # VM with noisy neighbours: ±10% on the same work), and medians of interleaved runs cancel
    # that out of the ratio. On a GPU the bare engine runs once (two engines would not fit).
    rounds: int
    latency_samples: int
    back_to_back: int  # 0 skips the three-batch comparison
    ingest_lines: int
    ingest_line_bytes: int
    api_seconds: float
    api_batch: int
    memory_small: int
    memory_large: int

    @classmethod
    def for_run(cls, *, quick: bool, requests: int | None) -> Sizes:
        if quick:
            return cls(
                requests=requests or 300,
                warmup=32,
                rounds=1,
                latency_samples=2,
                back_to_back=0,
                ingest_lines=2_000,
                ingest_line_bytes=4_000,
                api_seconds=2.0,
                api_batch=3_000,
                memory_small=100,
                memory_large=1_000,
            )
        return cls(
            requests=requests or 10_000,
            warmup=256,
            rounds=3,
            latency_samples=5,
            back_to_back=1_000,
            # 50,000 lines of 4,000 bytes: 200 MB, just under the 200 MiB input limit.
            ingest_lines=50_000,
            ingest_line_bytes=4_000,
            api_seconds=8.0,
            api_batch=50_000,
            memory_small=1_000,
            memory_large=50_000,
        )


@dataclass(frozen=True)
class ModelSpec:
    name: str
    source: str
    engine_args: dict[str, Any]


# --- Input files ------------------------------------------------------------------------------


def request_line(index: int, *, model: str, prefix: str, pad_bytes: int = 0) -> dict[str, Any]:
    """One chat request: a short prompt (or a padded one), 32 output tokens, EOS ignored.

    ``ignore_eos`` makes every request generate exactly 32 tokens, so each run does the same
    work whatever the model says.
    """
    content = f"Tell me fact number {index}."
    if pad_bytes:
        content += " " + ("lorem ipsum dolor sit amet " * (pad_bytes // 27 + 1))[:pad_bytes]
    return {
        "custom_id": f"{prefix}-{index}",
        "method": "POST",
        "url": CHAT,
        "body": {
            "model": model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": OUTPUT_TOKENS,
            "ignore_eos": True,
        },
    }


def requests_write(path: Path, count: int, *, model: str, prefix: str, line_bytes: int = 0) -> Path:
    """Write ``count`` requests; with ``line_bytes``, pad each line to about that size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pad = 0
    if line_bytes:
        bare = len(json.dumps(request_line(0, model=model, prefix=prefix)))
        pad = max(0, line_bytes - bare - 2)
    with path.open("w", encoding="utf-8") as out:
        for index in range(count):
            out.write(json.dumps(request_line(index, model=model, prefix=prefix, pad_bytes=pad)))
            out.write("\n")
    return path


def bare_parse_seconds(path: Path) -> float:
    """The floor for validation: json.loads of every line, nothing else."""
    started = time.perf_counter()
    with path.open("rb") as stream:
        for raw in stream:
            json.loads(raw)
    return time.perf_counter() - started


# --- Engine arguments -------------------------------------------------------------------------


def engine_args_effective(engine_args: dict[str, Any]) -> dict[str, Any]:
    """The arguments the worker's engine really passes to vllm.LLM on this machine.

    The bare engine and run-batch get the same ones, so all three run the same engine.
    """
    from vllm.platforms import current_platform

    from inference import engine

    args = dict(engine_args)
    if current_platform.is_cpu():
        for name, value in engine._cpu_defaults(args).items():
            args.setdefault(name, value)
    return args


def engine_args_as_cli(engine_args: dict[str, Any]) -> list[str]:
    """vllm.LLM keyword arguments as CLI flags: ``enforce_eager`` -> ``--enforce-eager``."""
    flags: list[str] = []
    for name, value in engine_args.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is False:
            flags.append("--no-" + name.replace("_", "-"))
        elif isinstance(value, dict | list):
            flags += [flag, json.dumps(value)]
        else:
            flags += [flag, str(value)]
    return flags


# --- The bare engine (runs in its own process) ------------------------------------------------


# vLLM logs to stdout too: the child's own lines carry this prefix.
CHILD_MARK = "@@bench "


def _child_say(stdout: IO[str], message: dict[str, Any]) -> None:
    stdout.write(CHILD_MARK + json.dumps(message) + "\n")
    stdout.flush()


def child_hear(stdout: IO[str]) -> dict[str, Any]:
    """The child's next message, skipping vLLM's log lines; {} if it exited first."""
    for line in stdout:
        if line.startswith(CHILD_MARK):
            message: dict[str, Any] = json.loads(line[len(CHILD_MARK) :])
            return message
    return {}


def engine_child(config: dict[str, Any], stdin: IO[str], stdout: IO[str]) -> None:
    """Load vllm.LLM, say so, wait for the go line, warm up, then time LLM.chat over the file.

    Loading happens before the go so that the orchestrator can load the server's model at the
    same time; the measurement itself starts only when nothing else runs.
    """
    from vllm import LLM, SamplingParams

    conversations: list[Any] = []
    params: list[SamplingParams] = []
    with open(config["input"], "rb") as stream:
        for raw in stream:
            body = json.loads(raw)["body"]
            conversations.append(body["messages"])
            params.append(
                SamplingParams(max_tokens=body["max_tokens"], ignore_eos=body["ignore_eos"])
            )
    started = time.perf_counter()
    llm = LLM(model=config["source"], **config["engine_args"])
    load_seconds = time.perf_counter() - started
    _child_say(stdout, {"ready": True, "load_seconds": load_seconds})
    warmup = config["warmup"]
    warmed = False
    # One measurement per "go" line, until the orchestrator closes the pipe.
    while stdin.readline():
        if not warmed:
            llm.chat(conversations[:warmup], params[:warmup], use_tqdm=False)
            warmed = True
        started = time.perf_counter()
        outputs = llm.chat(conversations, params, use_tqdm=False)
        seconds = time.perf_counter() - started
        output_tokens = sum(len(choice.token_ids) for out in outputs for choice in out.outputs)
        result = {
            "requests": len(outputs),
            "seconds": seconds,
            "output_tokens": output_tokens,
            "load_seconds": load_seconds,
        }
        _child_say(stdout, result)


# --- Processes --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def log_tail(path: Path, size: int) -> str:
    """The last ``size`` bytes of a log, read from its end (a long run's log is large)."""
    with path.open("rb") as log:
        log.seek(max(0, log.seek(0, os.SEEK_END) - size))
        return log.read().decode(errors="replace")


def group_stop(
    process: subprocess.Popen[Any], stopping: Callable[[], bool], *, grace: float
) -> None:
    """Stop a server's process group as an operator's Ctrl-C would, its leader first.

    Signalled all at once, django-q2's sentinel dies asleep on the stop event, and the cluster's
    main process then waits for it until the grace ends in a SIGKILL (10-30 s per stop).
    Signalled alone, the main process sets the event while the sentinel lives; once ``stopping``
    says the sentinel is on its way out, the rest of the group (workers, vLLM's engine processes)
    can go at once. gunicorn's master, signalled alone, stops its workers itself.
    """
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while process.poll() is None and not stopping() and time.monotonic() < deadline:
            time.sleep(0.1)
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)
    # The group may outlive its leader (vLLM's engine processes): end all of it.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


class Service:
    """A server process group (gunicorn, a qcluster), logging to a file, stopped as a group."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            argv,
            cwd=MANAGE_PY.parent,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        # Nothing runs by now: a clean stop is quick, and a vLLM shutdown that hangs is cut.
        stopping = "stopping cluster processes"
        group_stop(self.process, lambda: stopping in self.tail(20_000), grace=10)
        self._log.close()

    def tail(self, size: int = 3000) -> str:
        return log_tail(self.log_path, size)


class RssSampler:
    """Peak resident memory of process trees, sampled on a thread while a measurement runs.

    vLLM's own processes (its engine core and model workers, named ``VLLM::…``) are counted
    apart under ``<name>_vllm``: their KV cache pages fill in as more sequences run at once,
    which says nothing about whether the server's memory grows with a batch's size.
    """

    def __init__(self, roots: dict[str, int], interval: float = 0.05) -> None:
        self.roots = roots
        self.interval = interval
        self.baseline: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    @staticmethod
    def tree_rss(pid: int) -> tuple[int, int]:
        """RSS of a process and its descendants: (the server's processes, vLLM's processes)."""
        import psutil

        try:
            root = psutil.Process(pid)
            processes = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0, 0
        ours = vllm = 0
        for process in processes:
            try:
                rss = process.memory_info().rss
                if process.name().startswith("VLLM::"):
                    vllm += rss
                else:
                    ours += rss
            except psutil.NoSuchProcess:
                continue
        return ours, vllm

    def _measure(self) -> dict[str, int]:
        sizes: dict[str, int] = {}
        for name, pid in self.roots.items():
            sizes[name], sizes[f"{name}_vllm"] = self.tree_rss(pid)
        return sizes

    def _sample(self) -> None:
        for name, rss in self._measure().items():
            self.peak[name] = max(self.peak.get(name, 0), rss)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> RssSampler:
        self.baseline = self._measure()
        self.peak = dict(self.baseline)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def peak_mb(self, name: str) -> float:
        return self.peak[name] / 2**20

    def growth_mb(self, name: str) -> float:
        return (self.peak[name] - self.baseline[name]) / 2**20


# --- HTTP -------------------------------------------------------------------------------------


class Api:
    """A keep-alive client for the server's /v1 API (one connection: one thread at a time)."""

    def __init__(self, port: int, key: str) -> None:
        self.port = port
        self.key = key
        self.connection = HTTPConnection("127.0.0.1", port, timeout=600)

    def request(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Authorization": f"Bearer {self.key}"}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            self.connection.request(method, path, body=payload, headers=headers)
            response = self.connection.getresponse()
        except (RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            # The server closed the idle keep-alive connection between two calls: send again.
            self.connection.close()
            self.connection.request(method, path, body=payload, headers=headers)
            response = self.connection.getresponse()
        data = response.read()
        if response.status >= 400:
            raise RuntimeError(f"{method} {path} answered {response.status}: {data[:500]!r}")
        return json.loads(data) if data else None

    def upload(self, path: Path) -> str:
        """POST /v1/files, streaming the file from disk as multipart."""
        boundary = "bench-" + os.urandom(8).hex()
        head = (
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
            "Content-Type: application/jsonl\r\n\r\n"
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        length = len(head) + path.stat().st_size + len(tail)
        connection = self.connection
        connection.close()  # a fresh connection: the server may have closed the idle one
        connection.putrequest("POST", "/v1/files")
        connection.putheader("Authorization", f"Bearer {self.key}")
        connection.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
        connection.putheader("Content-Length", str(length))
        connection.endheaders()
        connection.send(head)
        with path.open("rb") as stream:
            while block := stream.read(1 << 20):
                connection.send(block)
        connection.send(tail)
        response = connection.getresponse()
        data = response.read()
        if response.status >= 400:
            raise RuntimeError(f"upload answered {response.status}: {data[:500]!r}")
        file_id: str = json.loads(data)["id"]
        return file_id

    def batch_create(self, file_id: str) -> str:
        batch = self.request(
            "POST",
            "/v1/batches",
            {"input_file_id": file_id, "endpoint": CHAT, "completion_window": "24h"},
        )
        batch_id: str = batch["id"]
        return batch_id

    def close(self) -> None:
        self.connection.close()


@dataclass
class LoadResult:
    requests: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    errors: int = 0

    def summary(self) -> dict[str, float | int]:
        ordered = sorted(self.latencies)

        def percentile(fraction: float) -> float:
            if not ordered:
                return 0.0
            return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000

        return {
            "requests": self.requests,
            "errors": self.errors,
            "requests_per_second": self.requests / self.seconds if self.seconds else 0.0,
            "p50_ms": percentile(0.50),
            "p99_ms": percentile(0.99),
        }


async def _load_client(
    port: int, request: bytes, until: float, result: LoadResult, interval: float | None
) -> None:
    """Send ``request`` back to back, or (with ``interval``) one every ``interval`` seconds.

    Paced requests are timed from when they were due, not from when they went out: a slow
    answer that delays the next request counts against both (no coordinated omission).
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    loop = asyncio.get_running_loop()
    due = loop.time()
    try:
        while loop.time() < until:
            if interval is None:
                started = loop.time()
            else:
                # Spread the clients' first requests over one interval, then keep the pace.
                due += interval * (random.random() if result.requests == 0 else 1.0)
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())
                started = due
            writer.write(request)
            status_line = await reader.readline()
            length = 0
            close = False
            while (header := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = header.decode("latin-1").partition(":")
                if name.lower() == "content-length":
                    length = int(value)
                elif name.lower() == "connection" and value.strip().lower() == "close":
                    close = True
            await reader.readexactly(length)
            result.latencies.append(loop.time() - started)
            result.requests += 1
            if b" 200 " not in status_line:
                result.errors += 1
            if close:
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
    finally:
        writer.close()


def http_load(
    *, port: int, path: str, key: str, clients: int, seconds: float, rate: float | None = None
) -> LoadResult:
    """``clients`` keep-alive connections sending GET ``path`` for ``seconds``: back to back
    (the most the server can answer), or at ``rate`` requests per second in all.

    Back to back, latency is queueing by construction (32 clients / throughput, by Little's
    law); at a fixed rate below capacity it is what a client waits for an answer.

    An asyncio client with hand-written HTTP/1.1 costs the load generator far less CPU than
    threads with http.client, and the CPU is shared with the server under test.
    """
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {key}\r\nAccept: application/json\r\n\r\n"
    ).encode()
    result = LoadResult(requests=0, seconds=seconds)

    async def run() -> None:
        until = asyncio.get_running_loop().time() + seconds
        interval = clients / rate if rate else None
        await asyncio.gather(
            *(_load_client(port, request, until, result, interval) for _ in range(clients))
        )

    started = time.perf_counter()
    asyncio.run(run())
    result.seconds = time.perf_counter() - started
    return result


# --- The orchestrator -------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def wait_for(
    predicate: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.05
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


class Orchestrator:
    """Runs inside the bench's own database and file store (see ``bench_orchestrate``)."""

    def __init__(self, *, sizes: Sizes, model: ModelSpec, env: dict[str, str]) -> None:
        self.sizes = sizes
        self.model = model
        self.env = env
        self.logs = WORK_DIR / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.services: dict[str, Service] = {}
        # The bare engine, kept loaded between rounds where both engines fit (CPU).
        self.bare_engine: subprocess.Popen[str] | None = None
        self.port = free_port()
        self.key = ""

    # -- set-up ---------------------------------------------------------------------------

    def prepare_database(self) -> None:
        from django.core.management import call_command

        from batches.services import api_key_create_for_username
        from inference.services import model_register

        call_command("migrate", verbosity=0, interactive=False)
        model_register(
            name=self.model.name, source=self.model.source, engine_args=self.model.engine_args
        )
        _, self.key = api_key_create_for_username(username="bench", name="bench")

    def start_servers(self) -> None:
        python = sys.executable
        manage = str(MANAGE_PY)
        self.services["web"] = Service(
            "web",
            [python, "-m", "gunicorn", "-c", str(GUNICORN_CONFIG), "batchsite.wsgi"],
            {**self.env, "WEB_BIND": f"127.0.0.1:{self.port}"},
            self.logs,
        )
        self.services["cpu"] = Service(
            "cpu", [python, manage, "qcluster"], {**self.env, "Q_CLUSTER_NAME": "cpu"}, self.logs
        )
        self.start_gpu()
        wait_for(self._web_up, timeout=120, what="the web server", interval=0.2)

    def start_gpu(self) -> None:
        self.services["gpu"] = Service(
            "gpu",
            [sys.executable, str(MANAGE_PY), "qcluster"],
            {**self.env, "Q_CLUSTER_NAME": "gpu"},
            self.logs,
        )

    def stop(self, name: str) -> None:
        service = self.services.pop(name, None)
        if service is not None:
            service.stop()

    def stop_all(self) -> None:
        self.bare_engine_stop()
        for name in list(self.services):
            self.stop(name)

    def bare_engine_stop(self) -> None:
        engine, self.bare_engine = self.bare_engine, None
        if engine is not None:
            # Once it has answered there is nothing to wait for (vLLM's exit takes seconds).
            with contextlib.suppress(ProcessLookupError):
                os.killpg(engine.pid, signal.SIGKILL)
            engine.wait(timeout=30)

    def bare_engine_measure(self) -> dict[str, Any]:
        """One timed LLM.chat over the requests in the loaded bare engine."""
        engine = self.bare_engine
        if engine is None or engine.stdin is None or engine.stdout is None:
            raise RuntimeError("the bare engine is not running")
        log(f"engine: LLM.chat over {self.sizes.requests} requests")
        engine.stdin.write("go\n")
        engine.stdin.flush()
        result = child_hear(engine.stdout)
        if "seconds" not in result:
            raise RuntimeError(f"the bare engine failed; see {self.logs / 'engine.log'}")
        return result

    def _web_up(self) -> bool:
        try:
            connection = HTTPConnection("127.0.0.1", self.port, timeout=2)
            connection.request("GET", "/health")
            ok = connection.getresponse().status == 200
            connection.close()
            return ok
        except OSError:
            return False

    def api(self) -> Api:
        return Api(self.port, self.key)

    # -- waiting on the database ----------------------------------------------------------

    def batch_row(self, batch_id: str) -> dict[str, Any]:
        from batches.models import Batch

        return dict(Batch.objects.filter(pk=batch_id).values().get())

    def wait_batch(self, batch_id: str, *, statuses: tuple[str, ...], timeout: float) -> Any:
        from batches.models import Batch

        def reached() -> bool:
            status = Batch.objects.filter(pk=batch_id).values_list("status", flat=True).get()
            if status in STATUS_TERMINAL and status not in statuses:
                raise RuntimeError(f"batch {batch_id} ended {status}: {self.batch_row(batch_id)}")
            return status in statuses

        for service in self.services.values():
            if not service.alive():
                raise RuntimeError(f"{service.name} died:\n{service.tail()}")
        # Every figure comes from the batch's own timestamps, not from when this loop sees them:
        # it looks twice a second, so that the bench itself takes little from what it measures
        # (the worker runs niced, and yields the CPU to every poll).
        return wait_for(reached, timeout=timeout, what=f"batch {batch_id}", interval=0.5)

    def wait_idle(self) -> None:
        """Until the GPU worker runs nothing and no GPU task waits: the next batch finds it idle."""
        from django_q.models import OrmQ

        from inference.models import Worker

        def idle() -> bool:
            return (
                not OrmQ.objects.filter(key="gpu").exists()
                and not Worker.objects.exclude(current_batch_id="").exists()
            )

        wait_for(idle, timeout=300, what="an idle GPU worker", interval=0.1)
        time.sleep(0.5)

    # -- measurements ---------------------------------------------------------------------

    def run_batch_through_server(
        self, path: Path, *, sample: dict[str, int] | None = None
    ) -> dict[str, Any]:
        """POST /v1/files to completed; the phases come from the batch's own timestamps."""
        from inference.models import BatchChunk

        api = self.api()
        sampler = RssSampler(sample or {})
        with sampler:
            started = time.time()
            file_id = api.upload(path)
            uploaded = time.time()
            batch_id = api.batch_create(file_id)
            self.wait_batch(batch_id, statuses=("completed",), timeout=7_200)
        api.close()
        row = self.batch_row(batch_id)
        chunks = list(BatchChunk.objects.filter(batch_id=batch_id).order_by("index"))
        completed = row["completed_at"].timestamp()
        first_start = chunks[0].created_at.timestamp() - chunks[0].seconds
        last_recorded = chunks[-1].created_at.timestamp()
        chunk_seconds = sum(chunk.seconds for chunk in chunks)
        result: dict[str, Any] = {
            "batch_id": batch_id,
            "requests": row["request_total"],
            "completed": row["request_completed"],
            "seconds": completed - started,
            "phases": {
                "upload": uploaded - started,
                "create_and_validate": row["in_progress_at"].timestamp() - uploaded,
                "pickup": first_start - row["in_progress_at"].timestamp(),
                "chunks": chunk_seconds,
                "between_chunks": last_recorded - first_start - chunk_seconds,
                "to_finalizing": row["finalizing_at"].timestamp() - last_recorded,
                "finalize": completed - row["finalizing_at"].timestamp(),
            },
            "chunk_count": len(chunks),
        }
        if sample:
            result["peak_rss_mb"] = {name: sampler.peak_mb(name) for name in sampler.peak}
        return result

    def first_request_latency(self, path: Path) -> float:
        """POST /v1/batches until the idle worker holds the batch and runs its first chunk."""
        from inference.models import Worker

        api = self.api()
        file_id = api.upload(path)
        self.wait_idle()
        started = time.perf_counter()
        batch_id = api.batch_create(file_id)
        # 10 ms polls: the worker names the batch right before it hands the first chunk to vLLM.
        wait_for(
            lambda: Worker.objects.filter(current_batch_id=batch_id).exists(),
            timeout=120,
            what="the worker to start the batch",
            interval=0.01,
        )
        seconds = time.perf_counter() - started
        api.close()
        self.wait_batch(batch_id, statuses=("completed",), timeout=600)
        return seconds

    def measure_api(self, path: Path) -> dict[str, Any]:
        """GET /health, then GET /v1/batches/{id}, each under 32 clients, while a batch runs."""
        from inference.models import Worker

        api = self.api()
        file_id = api.upload(path)
        batch_id = api.batch_create(file_id)
        wait_for(
            lambda: Worker.objects.filter(current_batch_id=batch_id).exists(),
            timeout=120,
            what="the API-load batch to start",
        )
        seconds = self.sizes.api_seconds
        batch_path = f"/v1/batches/{batch_id}"
        load = functools.partial(
            http_load, port=self.port, key=self.key, clients=32, seconds=seconds
        )
        health = load(path="/health")
        batch = load(path=batch_path)
        # Latency where it means something: the same clients at half the GET route's capacity,
        # and /health at that same rate (what the machine itself adds: the engine's processes
        # share its cores).
        half_rate = batch.summary()["requests_per_second"] / 2
        half = load(path=batch_path, rate=half_rate)
        health_half = load(path="/health", rate=half_rate)
        still_running = self.batch_row(batch_id)["status"] == "in_progress"
        api.request("POST", f"/v1/batches/{batch_id}/cancel")
        api.close()
        self.wait_batch(batch_id, statuses=("cancelled", "completed"), timeout=600)
        self.wait_idle()
        return {
            "clients": 32,
            "seconds_each": seconds,
            "batch_ran_throughout": still_running,
            "health": health.summary(),
            "batch": batch.summary(),
            "batch_half_load": half.summary(),
            "health_at_that_rate": health_half.summary(),
        }

    def measure_ingest(self, path: Path) -> dict[str, Any]:
        """Upload and validate a large file with no GPU worker running, then cancel the batch."""
        api = self.api()
        roots = {"web": self.services["web"].pid, "cpu_worker": self.services["cpu"].pid}
        bare = bare_parse_seconds(path)
        with RssSampler(roots, interval=0.02) as sampler:
            started = time.time()
            file_id = api.upload(path)
            uploaded = time.time()
            batch_id = api.batch_create(file_id)
            self.wait_batch(batch_id, statuses=("in_progress",), timeout=1_800)
        row = self.batch_row(batch_id)
        api.request("POST", f"/v1/batches/{batch_id}/cancel")
        api.close()
        validated = row["in_progress_at"].timestamp()
        return {
            "lines": row["request_total"],
            "bytes": path.stat().st_size,
            "seconds": validated - started,
            "upload_seconds": uploaded - started,
            "validation_seconds": validated - uploaded,
            "bare_parse_seconds": bare,
            "web_rss_growth_mb": sampler.growth_mb("web"),
            "cpu_worker_rss_growth_mb": sampler.growth_mb("cpu_worker"),
        }

    def run_batch_cli(self, path: Path, output: Path) -> float:
        """vLLM's own batch runner on the same file: wall time, model load included."""
        argv = [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.run_batch",
            "-i",
            str(path),
            "-o",
            str(output),
            "--model",
            self.model.source,
            "--served-model-name",
            self.model.name,
            "--disable-log-stats",
            *engine_args_as_cli(engine_args_effective(self.model.engine_args)),
        ]
        log_path = self.logs / "run_batch.log"
        with log_path.open("ab") as log_file:
            started = time.perf_counter()
            completed = subprocess.run(  # noqa: S603 - our own interpreter and arguments
                argv, env=self.env, stdout=log_file, stderr=subprocess.STDOUT, check=False
            )
            seconds = time.perf_counter() - started
        if completed.returncode != 0:
            raise RuntimeError(f"run_batch failed; see {log_path}")
        with output.open("rb") as results:
            failed = sum(1 for raw in results if json.loads(raw).get("error"))
        if failed:
            raise RuntimeError(f"run_batch failed {failed} requests; see {output}")
        return seconds

    # -- the run --------------------------------------------------------------------------

    def engine_process(self, path: Path) -> subprocess.Popen[str]:
        config = {
            "source": self.model.source,
            "engine_args": engine_args_effective(self.model.engine_args),
            "input": str(path),
            "warmup": self.sizes.warmup,
        }
        return subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            [sys.executable, str(MANAGE_PY), "bench", "--engine-child", json.dumps(config)],
            cwd=MANAGE_PY.parent,
            env={**self.env, ROLE_ENV: "engine"},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=(self.logs / "engine.log").open("ab"),
            text=True,
            start_new_session=True,
        )

    def measure_engine(self, main: Path, warm: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        """The bare engine's time; also starts the servers and warms the GPU worker up.

        On CPU both model loads run at once (neither is measured; memory holds two tiny
        engines) and the engine's measurement starts once the server's worker is loaded and
        idle. On a GPU two engines would not fit: the bare engine runs and exits first.
        """
        from vllm.platforms import current_platform

        together = current_platform.is_cpu()
        engine = self.bare_engine = self.engine_process(main)
        warm_run: dict[str, Any] = {}
        try:
            if engine.stdout is None:
                raise RuntimeError("the bare engine's pipes are missing")
            if together:
                self.start_servers()
                warm_run = self.run_batch_through_server(warm)
            ready = child_hear(engine.stdout)
            if not ready.get("ready"):
                raise RuntimeError(f"the bare engine did not load; see {self.logs / 'engine.log'}")
            if together:
                self.wait_idle()
            result = self.bare_engine_measure()
        finally:
            # On a GPU its engine processes must be gone before the server is measured; on CPU
            # it stays for the next rounds (and goes on failure).
            if not together or self.sizes.rounds == 1:
                self.bare_engine_stop()
        if not together:
            self.start_servers()
            warm_run = self.run_batch_through_server(warm)
        self.wait_idle()
        return result, warm_run

    def run(self) -> dict[str, Any]:
        sizes = self.sizes
        name = self.model.name
        files = WORK_DIR / "inputs"
        main = requests_write(files / "main.jsonl", sizes.requests, model=name, prefix="main")
        warm = requests_write(files / "warm.jsonl", sizes.warmup, model=name, prefix="warm")
        small = requests_write(
            files / "small.jsonl", sizes.memory_small, model=name, prefix="small"
        )
        large = requests_write(
            files / "large.jsonl", sizes.memory_large, model=name, prefix="large"
        )
        api_file = requests_write(files / "api.jsonl", sizes.api_batch, model=name, prefix="api")
        latency_file = requests_write(files / "latency.jsonl", 20, model=name, prefix="lat")
        ingest_file = requests_write(
            files / "ingest.jsonl",
            sizes.ingest_lines,
            model=name,
            prefix="ingest",
            line_bytes=sizes.ingest_line_bytes,
        )
        results: dict[str, Any] = {}

        log("loading the model in a bare engine and in the server's GPU worker")
        results["engine"], warm_run = self.measure_engine(main, warm)

        roots = {"web": self.services["web"].pid, "worker": self.services["gpu"].pid}
        log("server: first request on an idle worker")
        samples = [self.first_request_latency(latency_file) for _ in range(sizes.latency_samples)]
        log(f"server: {sizes.requests} requests from upload to completed")
        self.wait_idle()
        server = self.run_batch_through_server(main, sample=roots)
        server["first_request_seconds"] = statistics.median(samples)
        server["first_request_samples"] = samples
        server["warmup_seconds"] = warm_run["seconds"]
        engine_runs, server_runs = [results["engine"]["seconds"]], [server["seconds"]]
        for _ in range(sizes.rounds - 1 if self.bare_engine is not None else 0):
            self.wait_idle()
            engine_runs.append(self.bare_engine_measure()["seconds"])
            log(f"server: {sizes.requests} requests again")
            server_runs.append(self.run_batch_through_server(main)["seconds"])
        self.bare_engine_stop()
        # The medians of runs taken in turn (the first run's phases describe the server path).
        results["engine"]["seconds"] = statistics.median(engine_runs)
        results["engine"]["runs_seconds"] = engine_runs
        server["seconds"] = statistics.median(server_runs)
        server["runs_seconds"] = server_runs
        results["server"] = server

        log(f"memory: {sizes.memory_small} and {sizes.memory_large} requests")
        self.wait_idle()
        back_to_back: list[dict[str, Any]] = []
        small_run = self.run_batch_through_server(small, sample=roots)
        back_to_back.append(small_run)
        for _ in range(2 if sizes.back_to_back else 0):
            back_to_back.append(self.run_batch_through_server(small, sample=roots))
        self.wait_idle()
        large_run = self.run_batch_through_server(large, sample=roots)
        results["memory"] = {
            "small": {"requests": sizes.memory_small, **small_run["peak_rss_mb"]},
            "large": {"requests": sizes.memory_large, **large_run["peak_rss_mb"]},
            "web_growth_mb": large_run["peak_rss_mb"]["web"] - small_run["peak_rss_mb"]["web"],
            "worker_growth_mb": (
                large_run["peak_rss_mb"]["worker"] - small_run["peak_rss_mb"]["worker"]
            ),
            "vllm_growth_mb": (
                large_run["peak_rss_mb"]["worker_vllm"] - small_run["peak_rss_mb"]["worker_vllm"]
            ),
        }

        log(f"api: 32 clients while a {sizes.api_batch}-request batch runs")
        self.wait_idle()
        results["api"] = self.measure_api(api_file)

        log(f"ingest: {sizes.ingest_lines} lines, GPU worker stopped")
        self.stop("gpu")
        results["ingest"] = self.measure_ingest(ingest_file)
        self.stop_all()

        log(f"run-batch: {sizes.requests} requests")
        run_batch: dict[str, Any] = {
            "requests": sizes.requests,
            "seconds": self.run_batch_cli(main, WORK_DIR / "run_batch_main.out.jsonl"),
        }
        if sizes.back_to_back:
            log(f"run-batch: three runs of {sizes.memory_small} requests")
            three = [
                self.run_batch_cli(small, WORK_DIR / f"run_batch_small_{i}.out.jsonl")
                for i in range(3)
            ]
            run_batch["three_batches"] = {
                "requests_each": sizes.memory_small,
                "run_batch_seconds": sum(three),
                "server_seconds": sum(run["seconds"] for run in back_to_back),
            }
        else:
            run_batch["three_batches"] = None
        results["run_batch"] = run_batch
        return results


# --- Report -----------------------------------------------------------------------------------

# (label, value path, target, higher is better)
TARGETS: list[tuple[str, str, float, bool]] = [
    ("server / engine at N", "ratios.server_over_engine", 1.10, False),
    ("POST /v1/batches -> first request running (s)", "server.first_request_seconds", 1.0, False),
    ("3 x 1,000 server / 3 x run-batch", "ratios.three_batches_server_over_run_batch", 0.5, False),
    ("ingest / bare json.loads", "ratios.ingest_over_bare_parse", 1.5, False),
    ("ingest web RSS growth (MB)", "ingest.web_rss_growth_mb", 100, False),
    ("ingest CPU-worker RSS growth (MB)", "ingest.cpu_worker_rss_growth_mb", 100, False),
    ("web RSS, large - small batch (MB)", "memory.web_growth_mb", 100, False),
    ("worker RSS, large - small batch (MB)", "memory.worker_growth_mb", 100, False),
    ("GET batch / GET /health throughput", "ratios.api_batch_over_health", 0.5, True),
    ("GET batch p99 at half its capacity (ms)", "api.batch_half_load.p99_ms", 50, False),
    ("GET batch p99 at full capacity (ms)", "api.batch.p99_ms", 50, False),
]


def _lookup(data: dict[str, Any], path: str) -> Any:
    value: Any = data
    for part in path.split("."):
        if not isinstance(value, dict) or value.get(part) is None:
            return None
        value = value[part]
    return value


def report_complete(results: dict[str, Any]) -> dict[str, Any]:
    """Add the ratios and the verdict on each target to the measurements."""
    engine, server, run_batch = results["engine"], results["server"], results["run_batch"]
    ingest, api = results["ingest"], results["api"]
    three = run_batch.get("three_batches")
    results["ratios"] = {
        "server_over_engine": server["seconds"] / engine["seconds"],
        "server_over_run_batch": server["seconds"] / run_batch["seconds"],
        "three_batches_server_over_run_batch": (
            three["server_seconds"] / three["run_batch_seconds"] if three else None
        ),
        "ingest_over_bare_parse": ingest["seconds"] / ingest["bare_parse_seconds"],
        "api_batch_over_health": (
            api["batch"]["requests_per_second"] / api["health"]["requests_per_second"]
        ),
    }
    verdicts = []
    for label, path, target, higher in TARGETS:
        value = _lookup(results, path)
        met = None if value is None else (value >= target if higher else value <= target)
        verdicts.append(
            {"target": label, "value": value, "goal": target, "at_least": higher, "met": met}
        )
    results["targets"] = verdicts
    return results


def _number(value: Any, digits: int = 2) -> str:
    if value is None:
        return "skipped"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def report_table(results: dict[str, Any]) -> str:
    """The results as Markdown tables (readable in a terminal, pasteable into the README)."""
    engine, server, run_batch = results["engine"], results["server"], results["run_batch"]
    ingest, api, memory = results["ingest"], results["api"], results["memory"]
    three = run_batch.get("three_batches") or {}
    n = engine["requests"]
    engine_runs = engine.get("runs_seconds") or [engine["seconds"]]
    server_runs = server.get("runs_seconds") or [server["seconds"]]

    def runs(values: list[float]) -> str:
        if len(values) == 1:
            return ""
        return f" (median of {', '.join(f'{v:.2f}' for v in values)}; runs taken in turn)"

    rows = [
        ("engine: LLM.chat", f"{n:,} requests", f"{engine['seconds']:.2f} s{runs(engine_runs)}"),
        (
            "server: POST /v1/files -> completed",
            f"{server['requests']:,} requests",
            f"{server['seconds']:.2f} s{runs(server_runs)}",
        ),
        (
            "server: POST /v1/batches -> first request running",
            "idle worker, median",
            f"{server['first_request_seconds']:.3f} s",
        ),
        (
            "run-batch (model load included)",
            f"{run_batch['requests']:,} requests",
            f"{run_batch['seconds']:.2f} s",
        ),
        (
            "3 back-to-back batches: server",
            f"3 x {three.get('requests_each', 0):,}",
            _number(three.get("server_seconds")) + (" s" if three else ""),
        ),
        (
            "3 back-to-back batches: run-batch",
            f"3 x {three.get('requests_each', 0):,}",
            _number(three.get("run_batch_seconds")) + (" s" if three else ""),
        ),
        (
            "ingest: upload + validation",
            f"{ingest['lines']:,} lines, {ingest['bytes'] / 1e6:,.0f} MB",
            f"{ingest['seconds']:.2f} s",
        ),
        ("ingest: bare json.loads per line", "same file", f"{ingest['bare_parse_seconds']:.2f} s"),
        (
            "ingest: RSS growth web / CPU worker",
            "",
            f"{ingest['web_rss_growth_mb']:.0f} / {ingest['cpu_worker_rss_growth_mb']:.0f} MB",
        ),
        (
            "api: GET /health",
            "32 clients",
            f"{api['health']['requests_per_second']:,.0f} req/s, "
            f"p50 {api['health']['p50_ms']:.1f} ms, p99 {api['health']['p99_ms']:.1f} ms",
        ),
        (
            "api: GET /v1/batches/{id}",
            "32 clients",
            f"{api['batch']['requests_per_second']:,.0f} "
            f"req/s, p50 {api['batch']['p50_ms']:.1f} ms, p99 {api['batch']['p99_ms']:.1f} ms",
        ),
        (
            "api: GET /v1/batches/{id} at half that rate",
            "32 clients",
            f"{api['batch_half_load']['requests_per_second']:,.0f} req/s, "
            f"p50 {api['batch_half_load']['p50_ms']:.1f} ms, "
            f"p99 {api['batch_half_load']['p99_ms']:.1f} ms",
        ),
        (
            "api: GET /health at that same rate",
            "32 clients",
            f"{api['health_at_that_rate']['requests_per_second']:,.0f} req/s, "
            f"p50 {api['health_at_that_rate']['p50_ms']:.1f} ms, "
            f"p99 {api['health_at_that_rate']['p99_ms']:.1f} ms",
        ),
        (
            "memory: peak RSS web / worker / vLLM",
            f"{memory['small']['requests']:,} requests",
            f"{memory['small']['web']:.0f} / {memory['small']['worker']:.0f} / "
            f"{memory['small']['worker_vllm']:.0f} MB",
        ),
        (
            "memory: peak RSS web / worker / vLLM",
            f"{memory['large']['requests']:,} requests",
            f"{memory['large']['web']:.0f} / {memory['large']['worker']:.0f} / "
            f"{memory['large']['worker_vllm']:.0f} MB",
        ),
    ]
    lines = ["| measurement | size | result |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    phases = server["phases"]
    lines += [
        "",
        "server phases (s): " + ", ".join(f"{k} {v:.2f}" for k, v in phases.items()),
        "",
        "| target | value | goal | met |",
        "|---|---|---|---|",
    ]
    for verdict in results["targets"]:
        met = {True: "yes", False: "**no**", None: "skipped"}[verdict["met"]]
        lines.append(
            f"| {verdict['target']} | {_number(verdict['value'])} | "
            f"{'≥' if verdict['at_least'] else '≤'} {verdict['goal']} "
            f"| {met} |"
        )
    return "\n".join(lines)


def machine_description() -> dict[str, Any]:
    import vllm

    return {
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "vllm": vllm.__version__,
        "database": settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1],
    }


# --- Entry points -----------------------------------------------------------------------------


def bench_environment(database_url: str) -> dict[str, str]:
    """The environment every bench process runs in: its own database and file store."""
    env = dict(os.environ)
    env.update(
        {
            ROLE_ENV: "orchestrate",
            "DATABASE_URL": database_url,
            "BATCH_DATA_DIR": str(DATA_DIR),
            "BATCH_FILES_DIR": str(DATA_DIR / "files"),
        }
    )
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    return env


def model_spec(model_name: str) -> ModelSpec:
    """The operator's registered model, or the tiny model built under var/bench/model."""
    if model_name:
        from inference.models import RegisteredModel

        registered = RegisteredModel.objects.get(name=model_name)
        return ModelSpec(registered.name, registered.source, dict(registered.engine_args))
    from inference.tiny_model import tiny_model_ensure

    source = tiny_model_ensure(TINY_MODEL_DIR)
    return ModelSpec(TINY_MODEL_NAME, str(source.resolve()), dict(TINY_ENGINE_ARGS))


def bench_launch(
    *, quick: bool, requests: int | None, model_name: str, json_path: str, database_url: str
) -> int:
    """manage.py bench: re-run as the orchestrator against the bench's own database."""
    spec = model_spec(model_name)
    if not database_url:
        shutil.rmtree(DATA_DIR, ignore_errors=True)
        DATA_DIR.mkdir(parents=True)
        database_url = f"sqlite:///{DATA_DIR / 'db.sqlite3'}"
    shutil.rmtree(WORK_DIR, ignore_errors=True)
    WORK_DIR.mkdir(parents=True)
    argv = [sys.executable, str(MANAGE_PY), "bench", "--model-spec", json.dumps(spec.__dict__)]
    if quick:
        argv.append("--quick")
    if requests:
        argv += ["--n", str(requests)]
    if json_path:
        argv += ["--json", str(Path(json_path).resolve())]
    return subprocess.call(argv, env=bench_environment(database_url))  # noqa: S603


def bench_orchestrate(
    *, quick: bool, requests: int | None, spec: dict[str, Any], json_path: str
) -> dict[str, Any]:
    """Run every measurement; return the results with ratios and the verdict on each target."""
    sizes = Sizes.for_run(quick=quick, requests=requests)
    model = ModelSpec(**spec)
    env = dict(os.environ)
    env.pop(ROLE_ENV, None)
    orchestrator = Orchestrator(sizes=sizes, model=model, env=env)
    started = time.perf_counter()
    try:
        orchestrator.prepare_database()
        results = orchestrator.run()
    finally:
        orchestrator.stop_all()
    results["config"] = {
        "quick": quick,
        "requests": sizes.requests,
        "output_tokens": OUTPUT_TOKENS,
        "model": model.name,
        "source": model.source,
        "engine_args": engine_args_effective(model.engine_args),
        "machine": machine_description(),
        "wall_seconds": time.perf_counter() - started,
    }
    report_complete(results)
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2, default=str) + "\n")
    return results
