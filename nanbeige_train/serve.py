"""An OpenAI-compatible HTTP server over our own generation engine: ``nanbeige serve``.

``nanbeige serve --model smollm2-135m-instruct --port 8000`` loads one :class:`TorchEngine` and
answers ``GET /v1/models``, ``POST /v1/completions`` and ``POST /v1/chat/completions`` (n,
temperature, top_p, max_tokens, stop, seed, logprobs; vLLM's ``return_token_ids`` and
``include_stop_str_in_output``), so many runs can share one teacher (``teacher.model:
http://host:8000/v1``). Errors have OpenAI's shape, ``{"error": {"message", "type", "param",
"code"}}``: 400 for a field out of range, a malformed body or a prompt longer than the context,
404 for another model's name or path, 500 when the engine fails.

One thread owns the engine. Requests that arrive within ``gather_ms`` of each other (or while
the engine is busy) are merged into one ``generate`` call when merging cannot change their
samples: greedy requests with the same parameters, and unseeded requests with the same
parameters (they get one fresh random seed). A seeded sampled request runs alone, because the
engine's row seeds depend on a row's place in the call: alone it is reproducible.

Trade-offs: no streaming, no ``echo``, no penalties or ``logit_bias`` (refused with 400, not
ignored); ``top_logprobs`` list the sampled token only (the engine keeps no alternatives).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import logging
import queue
import random
import threading
import time
import uuid
from collections.abc import Hashable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nanbeige_data.models import PACKAGED_MODEL, Sample, SamplingParams

if TYPE_CHECKING:
    from nanbeige_data.config import TeacherConfig

log = logging.getLogger("nanbeige.serve")
MAX_N = 64  # samples per prompt in one request


class RequestError(Exception):
    """A request the server refuses; becomes an OpenAI-shaped error response."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str = ""):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


# --------------------------------------------------------------------------- request bodies


class _Body(BaseModel):
    """The fields both endpoints share; unknown fields are accepted and ignored, as vLLM does."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    n: int = Field(1, ge=1, le=MAX_N)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    return_token_ids: bool = False
    include_stop_str_in_output: bool = False

    def stops(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if any(not s for s in stops):
            raise RequestError(400, "stop strings must be non-empty", "stop")
        return tuple(stops)


class CompletionBody(_Body):
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for completions
    logprobs: int | None = Field(None, ge=0, le=20)


class _Part(BaseModel):
    type: Literal["text"]
    text: str


class _Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str | list[_Part]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatBody(_Body):
    messages: list[_Message] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    max_completion_tokens: int | None = Field(None, ge=1)


# fields this server cannot honour, with the value that means "not used"
UNSUPPORTED = {"stream": False, "echo": False, "presence_penalty": 0, "frequency_penalty": 0,
               "logit_bias": {}, "tools": [], "suffix": ""}  # fmt: skip


def _parse(model: type[BaseModel], raw: Any) -> Any:
    """The validated body; a field out of range or one we cannot honour is a 400 naming it."""
    if isinstance(raw, dict):
        for name, unused in UNSUPPORTED.items():
            if raw.get(name) not in (None, unused):
                raise RequestError(400, f"{name} is not supported by this server", name)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise RequestError(400, f"{param or 'body'}: {first['msg']}", param) from None


# --------------------------------------------------------------------------- the engine thread


@dataclass
class _Job:
    prompts: list[str]
    params: SamplingParams
    key: Hashable
    future: concurrent.futures.Future


def merge_key(params: SamplingParams, seeded: bool) -> Hashable:
    """Jobs with equal keys may share one generate call (see the module docstring)."""
    if params.temperature == 0:
        return ("greedy", replace(params, seed=0))
    if not seeded:
        return ("unseeded", replace(params, seed=0))
    return ("alone", object())


class Batcher:
    """The one thread that calls the engine, merging jobs queued together by :func:`merge_key`."""

    def __init__(self, engine: Any, gather_s: float) -> None:
        self.engine, self.gather_s = engine, gather_s
        self.jobs: queue.Queue[_Job | None] = queue.Queue()  # None: stop
        self.counts = {"requests": 0, "batches": 0, "tokens": 0}
        self.thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self.thread.start()

    def submit(self, prompts: list[str], params: SamplingParams, seeded: bool):
        """A future for the samples of ``prompts`` (one list of n per prompt)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        self.jobs.put(_Job(prompts, params, merge_key(params, seeded), future))
        return future

    def close(self) -> None:
        """Stop the thread once the jobs queued before this call are done."""
        self.jobs.put(None)
        self.thread.join()

    def _run(self) -> None:
        while True:
            first = self.jobs.get()
            if first is None:
                return
            jobs, closing = [first], False
            deadline = time.monotonic() + self.gather_s
            while not closing:
                try:
                    job = self.jobs.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                closing = job is None
                jobs += [] if closing else [job]
            groups: dict[Hashable, list[_Job]] = {}
            for job in jobs:
                groups.setdefault(job.key, []).append(job)
            for group in groups.values():
                self._run_group(group)
            if closing:
                return

    def _run_group(self, group: list[_Job]) -> None:
        params = group[0].params
        if group[0].key[0] == "unseeded":
            params = replace(params, seed=random.getrandbits(31))
        prompts = [p for job in group for p in job.prompts]
        started = time.perf_counter()
        try:
            out = self.engine.generate(prompts, params)
        except Exception as exc:  # the request fails, the server stays up
            log.exception("generate failed for %d prompt(s)", len(prompts))
            for job in group:
                job.future.set_exception(exc)
            return
        tokens = sum(len(s.token_ids) for row in out for s in row)
        seconds = time.perf_counter() - started
        self.counts["requests"] += len(group)
        self.counts["batches"] += 1
        self.counts["tokens"] += tokens
        log.info(
            "batch: %d request(s), %d row(s), %d tokens in %.2fs (%.1f tokens/s)",
            len(group), len(prompts) * params.n, tokens, seconds, tokens / max(seconds, 1e-9),
        )  # fmt: skip
        at = 0
        for job in group:
            job.future.set_result(out[at : at + len(job.prompts)])
            at += len(job.prompts)


# --------------------------------------------------------------------------- the API


class Server:
    """The endpoints over one engine: parsing, the context check, response shapes."""

    def __init__(self, engine: Any, name: str, context: int, gather_ms: float = 5.0) -> None:
        self.engine, self.name, self.context = engine, name, context
        self.tokenizer = engine.tokenizer
        self.batcher = Batcher(engine, gather_ms / 1000)

    def models(self) -> dict:
        card = {"id": self.name, "object": "model", "created": 0, "owned_by": "nanbeige"}
        return {"object": "list", "data": [card | {"max_model_len": self.context}]}

    def _count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _prepare(self, body: _Body, prompts: list[str], max_tokens: int | None) -> tuple:
        """(SamplingParams, prompt token counts), or a RequestError for another model's name
        or a prompt plus completion longer than the context."""
        if body.model not in (None, self.name):
            raise RequestError(404, f"the model `{body.model}` does not exist", "model",
                               "model_not_found")  # fmt: skip
        counts = [self._count(p) for p in prompts]
        longest = max(counts)
        wanted = max_tokens if max_tokens is not None else self.context - longest
        if longest + max(wanted, 1) > self.context:
            raise RequestError(
                400,
                f"This model's maximum context length is {self.context} tokens. However, you "
                f"requested {longest + max(wanted, 1)} tokens ({longest} in the prompt, "
                f"{max(wanted, 1)} in the completion). Please reduce the length of the prompt "
                "or completion.",
                "prompt" if isinstance(body, CompletionBody) else "messages",
                "context_length_exceeded",
            )
        params = SamplingParams(
            n=body.n,
            temperature=body.temperature,
            top_p=body.top_p,
            max_tokens=wanted,
            stop=body.stops(),
            seed=body.seed or 0,
        )
        return params, counts

    async def _generate(self, body: _Body, prompts: list[str], max_tokens: int | None):
        import asyncio

        params, counts = self._prepare(body, prompts, max_tokens)
        future = self.batcher.submit(prompts, params, seeded=body.seed is not None)
        return params, counts, await asyncio.wrap_future(future)

    async def completions(self, raw: Any) -> dict:
        body = _parse(CompletionBody, raw)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts:
            raise RequestError(400, "prompt: at least one prompt is needed", "prompt")
        params, counts, out = await self._generate(body, prompts, body.max_tokens)
        choices = []
        for p, row in enumerate(out):
            for s, sample in enumerate(row):
                text, stop = _stop_handling(sample, params, body.include_stop_str_in_output)
                choice = {"index": p * params.n + s, "text": text, "logprobs": None}
                if body.logprobs is not None:
                    choice["logprobs"] = self._completion_logprobs(sample, body.logprobs > 0)
                choices.append(choice | _finish(sample, stop, body.return_token_ids))
        return _response("text_completion", "cmpl", self.name, choices, counts, out)

    async def chat_completions(self, raw: Any) -> dict:
        body = _parse(ChatBody, raw)
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        prompt = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        wanted = body.max_completion_tokens or body.max_tokens
        params, counts, out = await self._generate(body, [prompt], wanted)
        choices = []
        for s, sample in enumerate(out[0]):
            text, stop = _stop_handling(sample, params, body.include_stop_str_in_output)
            choice = {"index": s, "message": {"role": "assistant", "content": text}}
            choice["logprobs"] = self._chat_logprobs(sample) if body.logprobs else None
            choices.append(choice | _finish(sample, stop, body.return_token_ids))
        return _response("chat.completion", "chatcmpl", self.name, choices, counts, out)

    def _completion_logprobs(self, sample: Sample, top: bool) -> dict:
        tokens = [self.tokenizer.decode([t]) for t in sample.token_ids]
        offsets, at = [], 0
        for token in tokens:
            offsets.append(at)
            at += len(token)
        pairs = zip(tokens, sample.logprobs, strict=True)
        return {
            "tokens": tokens,
            "token_logprobs": list(sample.logprobs),
            "top_logprobs": [{t: lp} for t, lp in pairs] if top else None,
            "text_offset": offsets,
        }

    def _chat_logprobs(self, sample: Sample) -> dict:
        content = []
        for t, lp in zip(sample.token_ids, sample.logprobs, strict=True):
            token = self.tokenizer.decode([t])
            content.append(
                {"token": token, "logprob": lp, "bytes": list(token.encode()), "top_logprobs": []}
            )
        return {"content": content}


def _stop_handling(sample: Sample, params: SamplingParams, keep: bool) -> tuple[str, str | None]:
    """(text as the client wants it, the stop string that ended it or None)."""
    if sample.finish_reason != "stop":
        return sample.text, None
    ends = [s for s in params.stop if sample.text.endswith(s)]
    stop = max(ends, key=len) if ends else None
    if stop is None or keep:
        return sample.text, stop
    return sample.text[: -len(stop)], stop


def _finish(sample: Sample, stop: str | None, token_ids: bool) -> dict:
    reason = "length" if sample.finish_reason == "length" else "stop"
    out: dict[str, Any] = {"finish_reason": reason, "stop_reason": stop}
    if token_ids:
        out["token_ids"] = list(sample.token_ids)
    return out


def _response(kind: str, prefix: str, name: str, choices: list, counts: list, out: list) -> dict:
    completion = sum(len(s.token_ids) for row in out for s in row)
    return {
        "id": f"{prefix}-{uuid.uuid4().hex}",
        "object": kind,
        "created": int(time.time()),
        "model": name,
        "choices": choices,
        "usage": {
            "prompt_tokens": sum(counts),
            "completion_tokens": completion,
            "total_tokens": sum(counts) + completion,
        },
    }


# --------------------------------------------------------------------------- HTTP


def error_body(status: int, message: str, param: str | None = None, code: str = "") -> dict:
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code or status}}


def build_app(server: Server) -> Any:
    """The Starlette app: routes, and every failure as an OpenAI-shaped JSON error."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    def fail(status: int, message: str, param: str | None = None, code: str = ""):
        return JSONResponse(error_body(status, message, param, code), status_code=status)

    async def json_of(request: Request) -> Any:
        try:
            return await request.json()
        except ValueError as exc:
            raise RequestError(400, f"the body is not valid JSON: {exc}") from None

    def endpoint(handler):
        async def run(request: Request):
            try:
                return JSONResponse(await handler(await json_of(request)))
            except RequestError as exc:
                return fail(exc.status, exc.message, exc.param, exc.code)
            except Exception as exc:  # the engine failed: say so, keep serving
                return fail(500, f"generation failed: {type(exc).__name__}: {exc}")

        return run

    async def models(request: Request):
        return JSONResponse(server.models())

    async def health(request: Request):
        return JSONResponse({"status": "ok"} | server.batcher.counts)

    async def http_error(request: Request, exc: HTTPException):
        return fail(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")

    routes = [
        Route("/v1/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/v1/completions", endpoint(server.completions), methods=["POST"]),
        Route("/v1/chat/completions", endpoint(server.chat_completions), methods=["POST"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error})


def load_server(
    teacher: TeacherConfig, *, max_model_len: int | None = None, gather_ms: float = 5.0
) -> Server:
    """The engine for ``teacher.model`` (a local model: packaged name, .gguf or dir; prompts go
    in raw, the chat endpoint applies the template) behind a :class:`Server`."""
    from nanbeige_train.generation import load_teacher

    if teacher.model.startswith(("http://", "https://")):
        raise ValueError(f"cannot serve {teacher.model}: it is a server already")
    engine = load_teacher(teacher.model_copy(update={"chat": False, "backend": "torch"}))
    context = int(getattr(engine.model.config, "max_position_embeddings", 2048))
    if max_model_len is not None:
        context = min(context, max_model_len)
    return Server(engine, teacher.served_name or teacher.model, context, gather_ms)


def serve(
    teacher: TeacherConfig,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    max_model_len: int | None = None,
    gather_ms: float = 5.0,
) -> None:
    """Load the teacher, then answer requests until interrupted (SIGINT / SIGTERM)."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    started = time.perf_counter()
    server = load_server(teacher, max_model_len=max_model_len, gather_ms=gather_ms)
    log.info(
        "serving %s as %r (dtype %s, context %d, loaded in %.1fs) on http://%s:%d/v1",
        teacher.model, server.name, server.engine.dtype, server.context,
        time.perf_counter() - started, host, port,
    )  # fmt: skip
    uvicorn.run(build_app(server), host=host, port=port, log_level="warning")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``nanbeige serve`` and ``python -m nanbeige_train.serve``."""
    parser.add_argument("--model", default=PACKAGED_MODEL, help="packaged name, .gguf or dir")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--served-name", help="the name in /v1/models (default: --model)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--batch-size", type=int, default=32, help="rows decoded together")
    parser.add_argument("--max-model-len", type=int, help="cap the context below the model's")
    parser.add_argument("--gather-ms", type=float, default=5.0, help="wait to merge requests")


def serve_from_args(args: argparse.Namespace) -> None:
    from nanbeige_data.config import TeacherConfig

    teacher = TeacherConfig(
        model=args.model, served_name=args.served_name, dtype=args.dtype, batch_size=args.batch_size
    )
    serve(teacher, args.host, args.port, max_model_len=args.max_model_len, gather_ms=args.gather_ms)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nanbeige serve", description=__doc__.split("\n")[0])
    add_arguments(parser)
    serve_from_args(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
