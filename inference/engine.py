"""The in-process vLLM engine: one loaded model, a whole chunk of requests per call.

Each chunk's requests are added to the engine one by one (LLM.enqueue_chat / LLM.enqueue, the
two halves of LLM.chat / LLM.generate) and then run together, so vLLM batches them exactly as it
would in one LLM.chat call, while a request vLLM refuses (a prompt longer than the context, a
token id outside the vocabulary, a schema it cannot compile) fails alone instead of failing the
call. Results come back as complete lines of OpenAI's batch output format.

A chunk is started (``start_chunk``) and finished (``finish_chunk``) apart, so that the worker
can start the next chunk while the last requests of this one run (``wait_until_few_left``):
vLLM then never drains between chunks. Each finished request's output is kept for the chunk it
belongs to, whichever chunk the engine step that produced it was run for.
"""

from __future__ import annotations

import base64
import gc
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from inference import sampling
from inference.sampling import CHAT, COMPLETIONS, EMBEDDINGS, RequestError

if TYPE_CHECKING:
    from vllm import LLM, RequestOutput, SamplingParams
    from vllm.outputs import CompletionOutput, EmbeddingRequestOutput

    from inference.models import RegisteredModel

logger = logging.getLogger(__name__)

# Logprobs of -inf are not JSON; OpenAI and vLLM's server both write this floor instead.
LOGPROB_FLOOR = -9999.0
# How long close() waits for the engine's processes to exit before killing them.
SHUTDOWN_SECONDS = 15.0
# How often a running vLLM call checks that the engine's processes are still alive.
WATCH_SECONDS = 1.0

_T = TypeVar("_T")


class EngineDiedError(RuntimeError):
    """The engine's processes died: the chunk in flight is lost and the engine must be reloaded."""


@dataclass(slots=True)
class RequestResult:
    custom_id: str
    ok: bool
    # The complete output- or error-file line.
    line: dict[str, Any]
    input_tokens: int
    output_tokens: int


def _cpu_defaults(engine_args: dict[str, Any]) -> dict[str, Any]:
    """Engine arguments that suit vLLM's CPU backend, for those the registry leaves unset."""
    import torch

    defaults: dict[str, Any] = {
        # torch.compile costs ~30 s per load on CPU and bought nothing measurable for batch work.
        "enforce_eager": True,
        # The CPU worker dies ("CPU Generator does not use offset") when a seeded request's
        # prompt is prefilled in pieces; whole-prompt prefill never rewinds a generator.
        "enable_chunked_prefill": False,
    }
    if "gpu_memory_utilization" not in engine_args:
        # Otherwise vLLM claims 92% of the machine's memory, and refuses to start when others
        # use more than 8%. VLLM_CPU_KVCACHE_SPACE (GiB), when set, still takes precedence.
        defaults["kv_cache_memory_bytes"] = 1 << 30
    if not torch.cpu._is_avx512_bf16_supported():
        # vLLM picks bfloat16 on CPU; without AVX-512 BF16 it is emulated and runs ~2x slower.
        defaults["dtype"] = "float32"
    return defaults


def _child_pids() -> set[int]:
    """This process's descendants, less Python's own multiprocessing helpers.

    The resource tracker that multiprocessing starts with vLLM's first process serves this
    process for its whole life, so it is not the engine's to stop.
    """
    import psutil

    pids = set()
    for child in psutil.Process().children(recursive=True):
        try:
            command = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "from multiprocessing." not in command:
            pids.add(child.pid)
    return pids


def _reap(pids: Sequence[int]) -> None:
    """Wait for the engine's processes to exit; kill the ones that outstay SHUTDOWN_SECONDS."""
    import psutil

    _, alive = psutil.wait_procs(_processes(pids), timeout=SHUTDOWN_SECONDS)
    for process in alive:
        logger.warning("vLLM process %d outlived shutdown; killing it", process.pid)
        try:
            process.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(alive, timeout=SHUTDOWN_SECONDS)


def _processes(pids: Sequence[int]) -> list[Any]:
    import psutil

    processes = []
    for pid in pids:
        try:
            processes.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    return processes


def engine_key(source: str, engine_args: dict[str, Any]) -> str:
    """What identifies a loaded engine: two registry entries with the same key share one."""
    return json.dumps([source, engine_args], sort_keys=True, default=str)


def _new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(12)}"


def _floor(logprob: float) -> float:
    # Also maps NaN to the floor: NaN > x is False.
    return logprob if logprob > LOGPROB_FLOOR else LOGPROB_FLOOR


def _finish_reason(reason: str | None) -> str:
    return reason if reason in ("length", "stop") else "stop"


def _failure_line(
    custom_id: str, error: dict[str, Any], *, status: int, prefix: str
) -> dict[str, Any]:
    return {
        "id": _new_id(prefix),
        "custom_id": custom_id,
        "response": {
            "status_code": status,
            "request_id": _new_id("req_"),
            "body": {"error": error},
        },
        "error": {"code": error["code"], "message": error["message"]},
    }


def _request_failed(custom_id: str, error: RequestError, prefix: str) -> RequestResult:
    line = _failure_line(custom_id, error.as_error(), status=400, prefix=prefix)
    return RequestResult(custom_id, False, line, 0, 0)


def _server_failed(custom_id: str, error: BaseException, prefix: str) -> RequestResult:
    body = {
        "message": f"The engine failed on this request: {error}",
        "type": "server_error",
        "param": None,
        "code": "server_error",
    }
    line = _failure_line(custom_id, body, status=500, prefix=prefix)
    return RequestResult(custom_id, False, line, 0, 0)


def _token_logprobs(
    choice: CompletionOutput, top: int
) -> Iterator[tuple[str, float, list[tuple[str, float]]]]:
    """Each generated token's text and logprob, with the top alternatives in rank order."""
    for token_id, candidates in zip(choice.token_ids, choice.logprobs or (), strict=False):
        entries = candidates or {}
        chosen = entries.get(token_id)
        ranked = sorted(
            (c for c in entries.values() if c.rank is not None and c.rank <= top),
            key=lambda c: c.rank or 0,
        )
        yield (
            (chosen.decoded_token or "") if chosen else "",
            _floor(chosen.logprob) if chosen else LOGPROB_FLOOR,
            [(c.decoded_token or "", _floor(c.logprob)) for c in ranked],
        )


def _chat_logprobs(choice: CompletionOutput, top: int) -> list[dict[str, Any]]:
    return [
        {
            "token": text,
            "logprob": logprob,
            "bytes": list(text.encode()),
            "top_logprobs": [
                {"token": other, "logprob": other_logprob, "bytes": list(other.encode())}
                for other, other_logprob in ranked
            ],
        }
        for text, logprob, ranked in _token_logprobs(choice, top)
    ]


def _completion_logprobs(choice: CompletionOutput, top: int) -> dict[str, Any]:
    tokens: list[str] = []
    token_logprobs: list[float] = []
    top_logprobs: list[dict[str, float]] = []
    offsets: list[int] = []
    offset = 0
    for text, logprob, ranked in _token_logprobs(choice, top):
        tokens.append(text)
        token_logprobs.append(logprob)
        top_logprobs.append(dict(ranked))
        offsets.append(offset)
        offset += len(text)
    return {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top_logprobs,
        "text_offset": offsets,
    }


@dataclass(slots=True)
class _Job:
    """One generation request that passed the checks, and its engine requests (one per prompt)."""

    index: int
    custom_id: str
    params: SamplingParams
    prompts: list[Any]
    request_ids: list[str]


@dataclass(slots=True, eq=False)
class ChunkRun:
    """A chunk whose requests are in the engine; ``finish_chunk`` collects its results."""

    endpoint: str
    prefix: str
    # One per input item, in input order: set at once for refused requests, at the end for others.
    results: list[RequestResult | None]
    jobs: list[_Job]
    # Engine request ids whose final output has not come back yet.
    unfinished: set[str]


class Engine:
    """A loaded vllm.LLM and the conversion of batch requests to and from it."""

    def __init__(
        self,
        *,
        source: str,
        engine_args: dict[str, Any],
        model_name: str,
        default_sampling: dict[str, Any] | None = None,
    ) -> None:
        from vllm import LLM
        from vllm.platforms import current_platform

        self.source = source
        self.engine_args = dict(engine_args)
        self.key = engine_key(source, self.engine_args)
        self.model_name = model_name
        self.default_sampling = dict(default_sampling or {})
        args = dict(engine_args)
        if current_platform.is_cpu():
            for name, value in _cpu_defaults(args).items():
                args.setdefault(name, value)
        before = _child_pids()
        started = time.monotonic()
        self._llm: LLM | None = LLM(model=source, **args)
        self.load_seconds = time.monotonic() - started
        # The engine core and its workers: close() proves they are gone.
        self.process_ids = sorted(_child_pids() - before)
        self._processes = _processes(self.process_ids)
        self._dead = False
        model_config = self._llm.model_config
        self.max_model_len: int = model_config.max_model_len
        self.supports_generation = model_config.runner_type == "generate"
        self.supports_embeddings = "embed" in self._llm.supported_tasks
        # How many requests vLLM runs at once: fewer left in a chunk leave its slots idle.
        self.max_num_seqs: int = self._llm.llm_engine.vllm_config.scheduler_config.max_num_seqs
        # Finished outputs by engine request id, and the chunk each request belongs to.
        self._outputs: dict[str, RequestOutput] = {}
        self._owners: dict[str, ChunkRun] = {}
        logger.info(
            "loaded %s (%s) in %.1fs, max_model_len %d",
            model_name,
            source,
            self.load_seconds,
            self.max_model_len,
        )

    @property
    def alive(self) -> bool:
        return self._llm is not None and not self._dead

    def _loaded(self) -> LLM:
        if self._llm is None or self._dead:
            raise EngineDiedError(f"the engine for {self.model_name} is closed or dead")
        return self._llm

    def close(self) -> None:
        """Shut the engine's processes down and free its memory; idempotent."""
        llm, self._llm = self._llm, None
        if llm is None:
            return
        try:
            llm.llm_engine.engine_core.shutdown()
            llm.renderer.shutdown()
        except Exception:
            logger.exception("vLLM shutdown of %s failed; killing its processes", self.model_name)
        del llm
        gc.collect()
        _reap(self.process_ids)
        logger.info("released %s", self.model_name)

    # --- Chunks ---------------------------------------------------------------------------

    def run_chunk(
        self,
        endpoint: str,
        items: list[tuple[str, dict[str, Any]]],
        *,
        batch_request_prefix: str = "batch_req_",
    ) -> list[RequestResult]:
        """Run (custom_id, body) requests; return one result per request, in input order.

        Raises EngineDiedError when vLLM's processes die: then no result of the chunk counts.
        """
        return self.finish_chunk(
            self.start_chunk(endpoint, items, batch_request_prefix=batch_request_prefix)
        )

    def start_chunk(
        self,
        endpoint: str,
        items: list[tuple[str, dict[str, Any]]],
        *,
        batch_request_prefix: str = "batch_req_",
    ) -> ChunkRun:
        """Check and add the chunk's requests to the engine, which starts on them at once."""
        llm = self._loaded()
        run = ChunkRun(endpoint, batch_request_prefix, [None] * len(items), [], set())
        if endpoint == EMBEDDINGS:
            # Embeddings are one quick call, run here whole (nothing to overlap).
            self._run_embeddings(llm, items, run.results, batch_request_prefix)
        elif endpoint in (CHAT, COMPLETIONS):
            self._start_generation(llm, endpoint, items, run)
        else:
            error = RequestError(
                "invalid_value", f"Invalid value: '{endpoint}'. Unsupported endpoint.", "url"
            )
            for index, (custom_id, _) in enumerate(items):
                run.results[index] = _request_failed(custom_id, error, batch_request_prefix)
        return run

    def wait_until_few_left(self, run: ChunkRun) -> None:
        """Run the engine until no more of the chunk's requests are left than vLLM runs at once:
        from then on its slots free up, and the next chunk's requests can take them."""
        if len(run.unfinished) > self.max_num_seqs:
            self._step_until(lambda: len(run.unfinished) <= self.max_num_seqs)

    def finish_chunk(self, run: ChunkRun) -> list[RequestResult]:
        """Run the engine until the chunk's requests are done; its results, in input order.

        Raises EngineDiedError when vLLM's processes die: then no result of the chunk counts.
        """
        if run.jobs:
            try:
                self._step_until(lambda: not run.unfinished)
            except EngineDiedError:
                raise
            except Exception:
                logger.exception(
                    "vLLM failed on %d requests at once; retrying one by one", len(run.jobs)
                )
                self._run_one_by_one(run)
            else:
                outputs = [
                    output
                    for job in run.jobs
                    for request_id in job.request_ids
                    if (output := self._outputs.pop(request_id, None)) is not None
                ]
                self._collect(run.endpoint, run.jobs, outputs, run.results, run.prefix)
        return [result for result in run.results if result is not None]

    def abort(self, run: ChunkRun) -> None:
        """Take the chunk's unfinished requests out of the engine and forget its outputs."""
        if run.unfinished and self.alive:
            self._loaded().llm_engine.abort_request(sorted(run.unfinished))
        for job in run.jobs:
            for request_id in job.request_ids:
                self._owners.pop(request_id, None)
                self._outputs.pop(request_id, None)
        run.unfinished.clear()

    def _step_until(self, done: Callable[[], bool]) -> None:
        """Step the engine until ``done()``, keeping each finished output for its chunk."""
        from vllm import RequestOutput
        from vllm.v1.engine.exceptions import EngineDeadError

        engine = self._loaded().llm_engine

        def step() -> None:
            while not done() and engine.has_unfinished_requests():
                for output in engine.step():
                    if not output.finished or not isinstance(output, RequestOutput):
                        continue
                    run = self._owners.pop(output.request_id, None)
                    if run is not None:  # an aborted chunk's output has no owner any more
                        run.unfinished.discard(output.request_id)
                        self._outputs[output.request_id] = output

        try:
            self._watched(step)
        except EngineDeadError as error:
            raise self._dead_engine(error) from error

    def _unsupported_endpoint(self, endpoint: str) -> RequestError:
        if endpoint == EMBEDDINGS:
            message = (
                f"The model '{self.model_name}' does not support embeddings: register it with "
                'engine_args {"runner": "pooling", "convert": "embed"} to serve them.'
            )
        else:
            message = (
                f"The model '{self.model_name}' is loaded as a pooling (embedding) model and "
                f"does not support {endpoint}."
            )
        return RequestError("model_not_supported", message, "model")

    def _dead_engine(self, error: BaseException) -> EngineDiedError:
        self._dead = True
        return EngineDiedError(f"vLLM's engine for {self.model_name} died: {error}")

    def _processes_alive(self) -> bool:
        import psutil

        try:
            return all(
                process.is_running() and process.status() != psutil.STATUS_ZOMBIE
                for process in self._processes
            )
        except psutil.NoSuchProcess:
            return False

    def _watched(self, call: Callable[[], _T]) -> _T:
        """Run a blocking vLLM call while watching that the engine's processes stay alive.

        When the engine core dies between a request being sent and vLLM noticing the death,
        vLLM's client stops its output thread without a word and waits for outputs forever; the
        watch turns that hang into EngineDiedError.
        """
        outcome: list[tuple[bool, Any]] = []
        finished = threading.Event()

        def run() -> None:
            try:
                outcome.append((True, call()))
            except BaseException as error:
                outcome.append((False, error))
            finally:
                finished.set()

        threading.Thread(target=run, name="vllm-call", daemon=True).start()
        while not finished.wait(WATCH_SECONDS):
            if not self._processes_alive():
                raise self._dead_engine(RuntimeError("its processes exited"))
        succeeded, value = outcome[0]
        if not succeeded:
            raise value
        result: _T = value
        return result

    # --- Chat and completions -------------------------------------------------------------

    def _enqueue(self, llm: LLM, endpoint: str, prompt: Any, params: SamplingParams) -> str:
        if endpoint == CHAT:
            (request_id,) = llm.enqueue_chat([prompt], params, use_tqdm=False)
        elif isinstance(prompt, str):
            (request_id,) = llm.enqueue(prompt, params, use_tqdm=False)
        else:
            (request_id,) = llm.enqueue({"prompt_token_ids": prompt}, params, use_tqdm=False)
        # vLLM answers under the id it was given (the part before its random suffix).
        return request_id.partition("-")[0]

    def _refusal(self, endpoint: str, prompt: Any, error: Exception) -> RequestError:
        """Why vLLM refused to add a request, in OpenAI's words when it is the context length."""
        try:
            length = self._prompt_length(endpoint, prompt)
        except Exception:
            length = None
        what = "messages" if endpoint == CHAT else "prompt"
        if length is not None and length >= self.max_model_len:
            return RequestError(
                "context_length_exceeded",
                f"This model's maximum context length is {self.max_model_len} tokens. However, "
                f"your {what} resulted in {length} tokens (the completion needs at least 1). "
                f"Please reduce the length of the {what}.",
                what,
            )
        return RequestError("invalid_value", str(error), getattr(error, "parameter", None))

    def _prompt_length(self, endpoint: str, prompt: Any) -> int:
        llm = self._loaded()
        tokenizer = llm.get_tokenizer()
        if endpoint == CHAT:
            text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
            if not isinstance(text, str):
                return len(text)
            return len(tokenizer.encode(text, add_special_tokens=False))
        if isinstance(prompt, str):
            return len(tokenizer.encode(prompt))
        return len(prompt)

    def _start_generation(
        self, llm: LLM, endpoint: str, items: list[tuple[str, dict[str, Any]]], run: ChunkRun
    ) -> None:
        from vllm.v1.engine.exceptions import EngineDeadError

        prefix = run.prefix
        if not self.supports_generation:
            error = self._unsupported_endpoint(endpoint)
            for index, (custom_id, _) in enumerate(items):
                run.results[index] = _request_failed(custom_id, error, prefix)
            return
        try:
            if not self._owners and llm.llm_engine.has_unfinished_requests():
                # Leftovers of an interrupted call: finish them so their outputs are not ours.
                self._watched(lambda: llm.wait_for_completion(use_tqdm=False))
        except EngineDeadError as error:
            raise self._dead_engine(error) from error
        for index, (custom_id, body) in enumerate(items):
            try:
                params = sampling.sampling_params_from_body(
                    body,
                    endpoint=endpoint,
                    defaults=self.default_sampling,
                    max_model_len=self.max_model_len,
                )
                prompts: list[Any] = (
                    [sampling.chat_messages_from_body(body)]
                    if endpoint == CHAT
                    else sampling.completion_prompts_from_body(body)
                )
            except RequestError as error:
                run.results[index] = _request_failed(custom_id, error, prefix)
                continue
            job = _Job(index, custom_id, params, prompts, [])
            try:
                self._submit(llm, endpoint, job, run)
            except EngineDeadError as error:
                raise self._dead_engine(error) from error
            except Exception as error:  # whatever vLLM refuses, it refuses for this request only
                self._withdraw(llm, job, run)
                refusal = self._refusal(endpoint, prompts[len(job.request_ids)], error)
                run.results[index] = _request_failed(custom_id, refusal, prefix)
                continue
            run.jobs.append(job)

    def _submit(self, llm: LLM, endpoint: str, job: _Job, run: ChunkRun) -> None:
        """Add the job's prompts to the engine (job.request_ids grows as each one goes in)."""
        job.request_ids = []
        for prompt in job.prompts:
            request_id = self._enqueue(llm, endpoint, prompt, job.params)
            job.request_ids.append(request_id)
            run.unfinished.add(request_id)
            self._owners[request_id] = run

    def _withdraw(self, llm: LLM, job: _Job, run: ChunkRun) -> None:
        """Take a job's prompts back out of the engine (one of them was refused)."""
        if job.request_ids:
            llm.llm_engine.abort_request(job.request_ids)
        for request_id in job.request_ids:
            run.unfinished.discard(request_id)
            self._owners.pop(request_id, None)
            self._outputs.pop(request_id, None)

    def _collect(
        self,
        endpoint: str,
        jobs: list[_Job],
        outputs: list[RequestOutput],
        results: list[RequestResult | None],
        prefix: str,
    ) -> None:
        by_id = {output.request_id: output for output in outputs}
        created = int(time.time())
        for job in jobs:
            found = [by_id.get(request_id) for request_id in job.request_ids]
            job_outputs = [output for output in found if output is not None]
            if len(job_outputs) < len(found):
                missing = RuntimeError("vLLM returned no output for it")
                results[job.index] = _server_failed(job.custom_id, missing, prefix)
                continue
            results[job.index] = self._generation_result(
                endpoint, job, job_outputs, created, prefix
            )

    def _run_one_by_one(self, run: ChunkRun) -> None:
        """After vLLM failed on a chunk as a whole: its requests again, each on its own.

        Every other chunk in the engine is taken out meanwhile and put back after, so that each
        request here runs alone and its failure is its own.
        """
        from vllm import RequestOutput
        from vllm.v1.engine.exceptions import EngineDeadError

        llm = self._loaded()
        others = {owner for owner in self._owners.values() if owner is not run}
        for chunk in [run, *others]:
            for job in chunk.jobs:
                self._withdraw(llm, job, chunk)
        for job in run.jobs:
            try:
                self._submit(llm, run.endpoint, job, run)
                outputs = self._watched(
                    lambda: llm.wait_for_completion(RequestOutput, use_tqdm=False)
                )
            except EngineDeadError as error:
                raise self._dead_engine(error) from error
            except Exception as error:
                logger.exception("vLLM failed on request %s", job.custom_id)
                self._withdraw(llm, job, run)
                run.results[job.index] = _server_failed(job.custom_id, error, run.prefix)
                continue
            for request_id in job.request_ids:
                self._owners.pop(request_id, None)
            run.unfinished.clear()
            self._collect(run.endpoint, [job], outputs, run.results, run.prefix)
        for chunk in others:
            for job in chunk.jobs:
                self._submit(llm, chunk.endpoint, job, chunk)

    def _generation_result(
        self,
        endpoint: str,
        job: _Job,
        outputs: list[RequestOutput],
        created: int,
        prefix: str,
    ) -> RequestResult:
        top = job.params.logprobs
        n = job.params.n
        choices: list[dict[str, Any]] = []
        prompt_tokens = 0
        completion_tokens = 0
        cached_tokens = 0
        for prompt_index, output in enumerate(outputs):
            prompt_tokens += len(output.prompt_token_ids or ())
            cached_tokens += output.num_cached_tokens or 0
            completions = output.outputs
            if len(completions) > 1:
                completions = sorted(completions, key=lambda choice: choice.index)
            for choice in completions:
                completion_tokens += len(choice.token_ids)
                if endpoint == CHAT:
                    choices.append(
                        {
                            "index": choice.index,
                            "message": {
                                "role": "assistant",
                                "content": choice.text,
                                "refusal": None,
                                "annotations": [],
                            },
                            "logprobs": None
                            if top is None
                            else {"content": _chat_logprobs(choice, top), "refusal": None},
                            "finish_reason": _finish_reason(choice.finish_reason),
                        }
                    )
                else:
                    choices.append(
                        {
                            "index": prompt_index * n + choice.index,
                            "text": choice.text,
                            "logprobs": None if top is None else _completion_logprobs(choice, top),
                            "finish_reason": _finish_reason(choice.finish_reason),
                        }
                    )
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens},
        }
        if endpoint == CHAT:
            body = {
                "id": _new_id("chatcmpl-"),
                "object": "chat.completion",
                "created": created,
                "model": self.model_name,
                "choices": choices,
                "usage": usage,
                "system_fingerprint": None,
            }
        else:
            body = {
                "id": _new_id("cmpl-"),
                "object": "text_completion",
                "created": created,
                "model": self.model_name,
                "choices": choices,
                "usage": usage,
                "system_fingerprint": None,
            }
        line = {
            "id": _new_id(prefix),
            "custom_id": job.custom_id,
            "response": {"status_code": 200, "request_id": _new_id("req_"), "body": body},
            "error": None,
        }
        return RequestResult(job.custom_id, True, line, prompt_tokens, completion_tokens)

    # --- Embeddings -----------------------------------------------------------------------

    def _run_embeddings(
        self,
        llm: LLM,
        items: list[tuple[str, dict[str, Any]]],
        results: list[RequestResult | None],
        prefix: str,
    ) -> None:
        from vllm import PoolingParams
        from vllm.v1.engine.exceptions import EngineDeadError

        if not self.supports_embeddings:
            error = self._unsupported_endpoint(EMBEDDINGS)
            for index, (custom_id, _) in enumerate(items):
                results[index] = _request_failed(custom_id, error, prefix)
            return
        tokenizer = llm.get_tokenizer()
        # (item index, request, token ids of each input)
        jobs: list[tuple[int, sampling.EmbeddingInputs, list[list[int]]]] = []
        for index, (custom_id, body) in enumerate(items):
            try:
                request = sampling.embedding_inputs_from_body(body)
                token_lists = []
                for item in request.inputs:
                    token_lists.append(tokenizer.encode(item) if isinstance(item, str) else item)
                for position, tokens in enumerate(token_lists):
                    if len(tokens) > self.max_model_len:
                        raise RequestError(
                            "context_length_exceeded",
                            f"This model's maximum context length is {self.max_model_len} "
                            f"tokens. However, input[{position}] resulted in {len(tokens)} "
                            "tokens. Please reduce the length of the input.",
                            "input",
                        )
            except RequestError as error:
                results[index] = _request_failed(custom_id, error, prefix)
                continue
            jobs.append((index, request, token_lists))
        if not jobs:
            return

        def embed(
            selected: list[tuple[int, sampling.EmbeddingInputs, list[list[int]]]],
        ) -> list[EmbeddingRequestOutput]:
            prompts: list[Any] = []
            params = []
            for _, request, token_lists in selected:
                pooling = PoolingParams(dimensions=request.dimensions)
                for tokens in token_lists:
                    prompts.append({"prompt_token_ids": tokens})
                    params.append(pooling)
            return self._watched(lambda: llm.embed(prompts, pooling_params=params, use_tqdm=False))

        try:
            groups = [embed(jobs)]
            grouped = [jobs]
        except EngineDeadError as error:
            raise self._dead_engine(error) from error
        except Exception:
            logger.exception("vLLM failed on %d embedding requests; retrying one by one", len(jobs))
            groups, grouped = [], []
            for job in jobs:
                custom_id = items[job[0]][0]
                try:
                    groups.append(embed([job]))
                    grouped.append([job])
                except EngineDeadError as error:
                    raise self._dead_engine(error) from error
                except Exception as error:
                    results[job[0]] = _request_failed(
                        custom_id, RequestError("invalid_value", str(error), "input"), prefix
                    )
        for group_outputs, group_jobs in zip(groups, grouped, strict=True):
            position = 0
            for index, request, token_lists in group_jobs:
                count = len(token_lists)
                vectors = group_outputs[position : position + count]
                position += count
                results[index] = self._embedding_result(
                    items[index][0], request, vectors, token_lists, prefix
                )

    def _embedding_result(
        self,
        custom_id: str,
        request: sampling.EmbeddingInputs,
        outputs: list[EmbeddingRequestOutput],
        token_lists: list[list[int]],
        prefix: str,
    ) -> RequestResult:
        import numpy

        data = []
        for position, output in enumerate(outputs):
            vector = output.outputs.embedding
            embedding: Any = (
                base64.b64encode(numpy.asarray(vector, dtype="<f4").tobytes()).decode()
                if request.encoding_format == "base64"
                else list(vector)
            )
            data.append({"object": "embedding", "index": position, "embedding": embedding})
        prompt_tokens = sum(len(tokens) for tokens in token_lists)
        body = {
            "object": "list",
            "data": data,
            "model": self.model_name,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }
        line = {
            "id": _new_id(prefix),
            "custom_id": custom_id,
            "response": {"status_code": 200, "request_id": _new_id("req_"), "body": body},
            "error": None,
        }
        return RequestResult(custom_id, True, line, prompt_tokens, 0)


# --- The process-wide engine ------------------------------------------------------------------


class _Holder:
    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.lock = threading.Lock()


_holder = _Holder()


def engine_get(registered: RegisteredModel) -> Engine:
    """The engine for this registered model, loading it (and unloading another) if needed.

    One engine lives per process: a model with another source or other engine arguments is
    loaded only after the current one is fully released, because both rarely fit in memory.
    """
    key = engine_key(registered.source, registered.engine_args)
    with _holder.lock:
        engine = _holder.engine
        if engine is not None and (engine.key != key or not engine.alive):
            _holder.engine = None
            engine.close()
            engine = None
        if engine is None:
            engine = Engine(
                source=registered.source,
                engine_args=registered.engine_args,
                model_name=registered.name,
                default_sampling=registered.default_sampling,
            )
            _holder.engine = engine
        # Name and sampling defaults may change in the admin without reloading the weights.
        engine.model_name = registered.name
        engine.default_sampling = dict(registered.default_sampling or {})
        return engine


def engine_loaded() -> Engine | None:
    """The engine this process holds, if any (it may be dead; engine_get replaces it)."""
    return _holder.engine


def engine_release() -> None:
    """Close the engine this process holds, if any."""
    with _holder.lock:
        engine, _holder.engine = _holder.engine, None
    if engine is not None:
        engine.close()
