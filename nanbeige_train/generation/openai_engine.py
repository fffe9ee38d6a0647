"""The server engine: the generation interface over an OpenAI-compatible HTTP server.

``OpenAIEngine("http://host:8000/v1", chat=True).generate(prompts, params)`` sends one request
per prompt to ``/completions`` (or ``/chat/completions`` with the prompt as a user turn), asking
for ``n`` samples with the temperature, top-p, token budget, stop strings and a seed, plus the
sampled tokens' log-probabilities and (vLLM's ``return_token_ids``) their ids. ``batch_size``
requests are in flight at once, so a continuously batching server (``vllm serve``,
``nanbeige serve``) decodes them together.

Errors name the teacher URL and the cause: a server that cannot be reached, does not answer
within ``timeout_s``, answers 5xx (each retried ``max_retries`` times with a short back-off),
refuses the request (4xx: the server's own message is quoted, e.g. a prompt longer than the
context), or answers with something that is not the OpenAI response shape.

Trade-offs:

* Seeds: prompt ``i`` is sent with a seed derived from (seed, i), so equal prompts in one call get
  different samples and a call's samples do not depend on how requests were scheduled. Samples
  are the server's, not the torch engine's for the same seed; greedy text is the same.
* Stop strings are kept at the end of the text (vLLM's ``include_stop_str_in_output``; re-added
  from ``stop_reason`` when a server drops it), as the local engines keep them.
* ``score`` is not offered: OpenAI-compatible servers report the log-probabilities of sampled
  tokens, not of given continuations in a chat turn. Score with a local model.
* Unknown request fields (``return_token_ids``, ``include_stop_str_in_output``) are ignored by
  vLLM and our server; a strict server may refuse them, which the 4xx error then says.
"""

from __future__ import annotations

import concurrent.futures
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from nanbeige_data.models import Sample, SamplingParams
from nanbeige_train.generation.torch_engine import row_seed

# progress(rows finished, tokens generated) within the current generate() call, as TorchEngine's
Progress = Callable[[int, int], None]
BACKOFF_S = 0.5  # first retry waits this long, doubling after each further failure


class TeacherError(RuntimeError):
    """A teacher that cannot be loaded, reached or understood; the message says which and why.
    ``status`` is the HTTP status of a refused request (e.g. 400 for a prompt longer than the
    context) and ``prompt_index`` the prompt of the call it was for, so a caller can record and
    skip that one item and send the others again."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.prompt_index: int | None = None


class _Retriable(Exception):
    """A failure worth another attempt (timeout, connection error, 5xx); the text is the cause."""


def api_base(url: str) -> str:
    """``url`` without a trailing slash, with ``/v1`` added when it has no path at all."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise TeacherError(f"teacher {url!r}: not an http(s) URL of an OpenAI-compatible server")
    base = url.rstrip("/")
    return base if parts.path.strip("/") else base + "/v1"


def request_seed(seed: int, prompt_index: int) -> int:
    """The seed sent with prompt ``prompt_index`` of a call (31 bits: every server takes it)."""
    return row_seed(seed, prompt_index, 0) & 0x7FFFFFFF


@dataclass
class OpenAIEngine:
    """Sampling through an OpenAI-compatible server (``vllm serve``, ``nanbeige serve``)."""

    url: str  # the API base, e.g. http://127.0.0.1:8000/v1
    model: str | None = None  # the served model name (None: the first of /v1/models)
    chat: bool = False  # /chat/completions with the prompt as a user turn
    batch_size: int = 8  # requests in flight at once
    timeout_s: float = 300.0  # per request attempt
    max_retries: int = 2  # further attempts on timeouts, connection errors and 5xx
    progress: Progress | None = None  # called as each prompt's samples arrive (see Progress)
    dtype: str = "server"  # for reports: the server decides the dtype
    stats: dict[str, float] = field(default_factory=lambda: {"tokens": 0, "seconds": 0.0})

    def __post_init__(self) -> None:
        self.url = api_base(self.url)
        self._client: Any = None

    @classmethod
    def from_config(cls, cfg: Any) -> OpenAIEngine:
        """The engine for a :class:`~nanbeige_data.config.TeacherConfig` whose model is a URL,
        checked now: the server answers /models and serves ``cfg.served_name``."""
        engine = cls(
            cfg.model,
            model=cfg.served_name,
            chat=cfg.chat,
            batch_size=cfg.batch_size,
            timeout_s=cfg.timeout_s,
            max_retries=cfg.max_retries,
        )
        engine.served_model()
        return engine

    # -- transport -----------------------------------------------------------------------

    def _http(self) -> Any:
        import httpx

        if self._client is None:
            self._client = httpx.Client(
                timeout=httpx.Timeout(self.timeout_s),
                limits=httpx.Limits(max_connections=max(1, self.batch_size)),
            )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        """The JSON answer to one request, retried on timeouts, connection errors and 5xx."""
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            try:
                return self._once(method, path, body)
            except _Retriable as exc:
                cause = str(exc)
                if attempt + 1 < attempts:
                    time.sleep(BACKOFF_S * 2**attempt)
        tries = f"{attempts} attempt{'s' if attempts > 1 else ''}"
        raise TeacherError(f"teacher {self.url}: {method} {path}: {cause} ({tries})")

    def _once(self, method: str, path: str, body: dict | None) -> dict:
        import httpx

        where = f"{method} {path}"
        try:
            response = self._http().request(method, self.url + path, json=body)
        except httpx.TimeoutException:
            raise _Retriable(
                f"no answer within {self.timeout_s:g}s (raise teacher.timeout_s for a slow server)"
            ) from None
        except httpx.ConnectError as exc:
            raise _Retriable(f"cannot connect ({exc or 'refused'}); is it running?") from None
        except httpx.TransportError as exc:  # the connection broke mid-request
            raise _Retriable(f"connection lost ({type(exc).__name__}: {exc})") from None
        if response.status_code >= 500:
            raise _Retriable(f"server error HTTP {response.status_code}: {_message(response)}")
        if response.status_code >= 400:
            raise TeacherError(
                f"teacher {self.url}: {where} was refused (HTTP {response.status_code}): "
                f"{_message(response)}",
                status=response.status_code,
            )
        try:
            answer = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise TeacherError(
                f"teacher {self.url}: {where} returned malformed JSON "
                f"(HTTP {response.status_code}): {response.text[:200]!r}"
            ) from None
        if not isinstance(answer, dict):
            raise TeacherError(
                f"teacher {self.url}: {where} returned {answer!r:.200}, not a JSON object"
            )
        return answer

    # -- the engine interface ------------------------------------------------------------

    def served_model(self) -> str:
        """The model name requests carry: ``model`` if the server lists it, else the first it
        lists when ``model`` is None."""
        answer = self._call("GET", "/models")
        try:
            names = [m["id"] for m in answer["data"]]
        except (KeyError, TypeError):
            raise self._malformed("GET /models", "no data[].id", answer) from None
        if self.model is None:
            if not names:
                raise TeacherError(f"teacher {self.url}: the server serves no model")
            self.model = names[0]
        elif self.model not in names:
            raise TeacherError(
                f"teacher {self.url}: serves {names}, not {self.model!r} (teacher.served_name)"
            )
        return self.model

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Sample]]:
        if not prompts:
            return []
        if self.model is None:
            self.served_model()
        started, done, tokens = time.perf_counter(), 0, 0
        out: list[list[Sample]] = [[] for _ in prompts]
        workers = max(1, min(self.batch_size, len(prompts)))
        with concurrent.futures.ThreadPoolExecutor(workers, "teacher") as pool:
            futures = {
                pool.submit(self._complete, i, prompt, params): i
                for i, prompt in enumerate(prompts)
            }
            try:
                for future in concurrent.futures.as_completed(futures):
                    out[futures[future]] = _result(future, futures[future])
                    done += params.n
                    tokens += sum(len(s.token_ids) for s in out[futures[future]])
                    if self.progress is not None:
                        self.progress(done, tokens)
            except BaseException:
                pool.shutdown(cancel_futures=True)
                raise
        self.stats["tokens"] += tokens
        self.stats["seconds"] += time.perf_counter() - started
        return out

    def score(self, prompts: Sequence[str], continuations: Sequence[str]) -> list[list[float]]:
        raise NotImplementedError(
            f"teacher {self.url}: an OpenAI-compatible server reports the log-probabilities of "
            "sampled tokens only, not of given continuations; score with a local model "
            "(teacher.model = a model dir or the packaged name)"
        )

    # -- one request ---------------------------------------------------------------------

    def _complete(self, index: int, prompt: str, params: SamplingParams) -> list[Sample]:
        body: dict[str, Any] = {
            "model": self.model,
            "n": params.n,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_tokens,
            "seed": request_seed(params.seed, index),
            "return_token_ids": True,
            "include_stop_str_in_output": True,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        if self.chat:
            path = "/chat/completions"
            body |= {"messages": [{"role": "user", "content": prompt}], "logprobs": True}
        else:
            path = "/completions"
            body |= {"prompt": prompt, "logprobs": 0}
        answer = self._call("POST", path, body)
        try:
            choices = sorted(answer["choices"], key=lambda c: c["index"])
            samples = [self._sample(c, params) for c in choices]
        except (KeyError, TypeError, AttributeError) as exc:
            raise self._malformed(f"POST {path}", f"missing {exc}", answer) from None
        if len(samples) != params.n:
            raise self._malformed(
                f"POST {path}", f"{len(samples)} choices for n={params.n}", answer
            )
        return samples

    def _sample(self, choice: dict, params: SamplingParams) -> Sample:
        if self.chat:
            text = choice["message"]["content"] or ""
            entries = (choice.get("logprobs") or {}).get("content") or []
            logprobs = [float(e["logprob"]) for e in entries]
        else:
            text = choice["text"]
            logprobs = [
                float(x)
                for x in (choice.get("logprobs") or {}).get("token_logprobs") or []
                if x is not None
            ]
        reason, stop_reason = choice["finish_reason"], choice.get("stop_reason")
        if reason == "length":
            finish = "length"
        elif isinstance(stop_reason, str):
            finish = "stop"
            text = text if text.endswith(stop_reason) else text + stop_reason
        elif "stop_reason" not in choice and any(text.endswith(s) for s in params.stop):
            finish = "stop"  # a server without stop_reason that kept the stop string
        else:
            finish = "eos"
        token_ids = [int(t) for t in choice.get("token_ids") or []]
        return Sample(text, token_ids, logprobs, finish)

    def _malformed(self, where: str, what: str, answer: Any) -> TeacherError:
        shown = json.dumps(answer)[:200]
        return TeacherError(
            f"teacher {self.url}: {where}: not an OpenAI response ({what}): {shown}"
        )


def _result(future: concurrent.futures.Future, index: int) -> list[Sample]:
    """A request's samples; its TeacherError learns which prompt it was for."""
    try:
        return future.result()
    except TeacherError as exc:
        exc.prompt_index = index
        raise


def _message(response: Any) -> str:
    """The server's own error message (OpenAI's ``{"error": {"message"}}``, vLLM's older
    ``{"message"}``), else the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300] or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if body.get("message"):
            return str(body["message"])
        if body.get("detail"):
            return str(body["detail"])
    return json.dumps(body)[:300]
