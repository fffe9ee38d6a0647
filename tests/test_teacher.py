"""The teacher behind a URL: :class:`OpenAIEngine` against a real ``nanbeige serve`` on
127.0.0.1 (the packaged SmolLM2-135M-Instruct in fp32), and the errors a teacher URL gives:
nothing listening, a server that never answers, malformed answers, a prompt longer than the
context. One server per module; it is stopped by its PID at the end."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from nanbeige_data.config import TeacherConfig
from nanbeige_train.generation import (
    OpenAIEngine,
    SamplingParams,
    TeacherError,
    TorchEngine,
    load_teacher,
)

REPO = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m-instruct"
PROMPTS = ["What is 7 + 5? Answer with a number.", "Name one colour of the rainbow."]
READY_S = 120  # the server loads the model before it listens
# one torch thread for the server and for this process: their OpenMP threads would otherwise
# spin against each other on a 2-core host (measured: 10x slower decoding in this process)
THREADS = {"OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def local():
    """The packaged model in this process: the reference the server's answers must match.
    One torch thread while this module runs, as the server has (see THREADS)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield TorchEngine.load(MODEL, dtype="float32", chat=True, batch_size=4)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def server_process(local, tmp_path_factory):
    """``nanbeige serve`` on a free port over the same weights: (process, URL, log path).
    The server reads them as a model directory written from ``local`` (seconds, where parsing
    the GGUF again costs 20 s or more), which also covers serving a model directory."""
    where = tmp_path_factory.mktemp("serve")
    local.model.save_pretrained(where / "model")
    local.tokenizer.save_pretrained(where / "model")
    port, log = free_port(), where / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "assets.cli", "serve", "--model", str(where / "model"),
             "--served-name", MODEL, "--port", str(port), "--dtype", "float32"],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=os.environ | THREADS,
        )  # fmt: skip
    yield proc, f"http://127.0.0.1:{port}/v1", log
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def url(server_process) -> str:
    """The server's API base, once it answers /v1/models (bounded wait)."""
    proc, base, log = server_process
    deadline = time.monotonic() + READY_S
    while True:
        if proc.poll() is not None:
            pytest.fail(f"the server exited ({proc.returncode}):\n{log.read_text()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(base + "/models", timeout=2).status_code == 200:
                return base
        if time.monotonic() > deadline:
            pytest.fail(f"the server did not answer within {READY_S}s:\n{log.read_text()}")
        time.sleep(0.25)


def _view(out):
    return [(s.text, s.token_ids, s.finish_reason) for row in out for s in row]


# --------------------------------------------------------------------------- a real server


def test_greedy_text_matches_the_local_engine(local, url):
    chat = OpenAIEngine(url, chat=True, batch_size=4)
    templated = [
        local.tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
        )
        for p in PROMPTS
    ]
    raw = OpenAIEngine(url, chat=False, batch_size=4)
    for params in (
        SamplingParams(temperature=0, max_tokens=12),
        SamplingParams(temperature=0, max_tokens=12, stop=(" =",)),  # kept, as locally
    ):
        here = local.generate(PROMPTS, params)
        assert _view(chat.generate(PROMPTS, params)) == _view(here)
        remote = raw.generate(templated, params)  # /completions with the template applied
        assert _view(remote) == _view(here)
        for a, b in zip(remote, here, strict=True):
            assert a[0].logprobs == pytest.approx(b[0].logprobs, abs=2e-3)
    assert here[0][0].finish_reason == "stop" and here[0][0].text.endswith(" =")
    assert chat.model == MODEL  # the first of /v1/models


def test_samples_n_seeds_and_progress(url):
    seen = []
    teacher = OpenAIEngine(url, chat=True, progress=lambda rows, tokens: seen.append(rows))
    params = SamplingParams(n=3, temperature=1.0, max_tokens=8, seed=7)
    first = teacher.generate(PROMPTS, params)
    assert [len(row) for row in first] == [3, 3] and seen[-1] == 6
    assert _view(teacher.generate(PROMPTS, params)) == _view(first)
    other = teacher.generate(PROMPTS, SamplingParams(**{**params.as_dict(), "seed": 8}))
    assert _view(other) != _view(first)
    assert len({tuple(s.token_ids) for s in first[1]}) > 1  # a prompt's samples differ
    for sample in (s for row in first for s in row):
        assert sample.token_ids and len(sample.logprobs) == len(sample.token_ids)
        assert all(lp <= 0 for lp in sample.logprobs)
        assert sample.finish_reason in ("eos", "length")
    assert teacher.stats["tokens"] > 0


def test_load_teacher_picks_the_server_for_a_url(url):
    from assets.resources import TeacherResource
    from nanbeige_data.recipe import load_recipe

    cfg = TeacherConfig(model=url, timeout_s=60)
    engine = load_teacher(cfg)
    assert isinstance(engine, OpenAIEngine) and engine.model == MODEL and engine.chat
    recipe = load_recipe("tiny").model_copy(update={"teacher": cfg})
    assert isinstance(TeacherResource().engine(recipe), OpenAIEngine)
    with pytest.raises(TeacherError, match=r"serves \['smollm2-135m-instruct'\], not 'other'"):
        load_teacher(TeacherConfig(model=url, served_name="other"))
    with pytest.raises(NotImplementedError, match="score with a local model"):
        engine.score(["a"], ["b"])


def test_a_prompt_longer_than_the_context_quotes_the_servers_400(url):
    context = httpx.get(url + "/models").json()["data"][0]["max_model_len"]
    teacher = OpenAIEngine(url, chat=False)
    with pytest.raises(TeacherError) as error:
        teacher.generate(["Hi", "word " * (context + 10)], SamplingParams(max_tokens=2))
    message = str(error.value)
    assert url in message and "HTTP 400" in message
    assert f"maximum context length is {context} tokens" in message
    assert (error.value.status, error.value.prompt_index) == (400, 1)  # the item to skip


def test_the_server_merges_requests_only_where_samples_cannot_change(local):
    from nanbeige_train.serve import Batcher

    calls = []

    class Recording:  # the real engine, with its calls written down
        def generate(self, prompts, params):
            calls.append((len(prompts), params.temperature))
            return local.generate(prompts, params)

    greedy = SamplingParams(temperature=0, max_tokens=4)
    seeded = SamplingParams(temperature=1.0, max_tokens=4, seed=3)
    batcher = Batcher(Recording(), gather_s=1.0)  # all three are queued within the second
    jobs = [
        batcher.submit([PROMPTS[0]], greedy, seeded=False),
        batcher.submit([PROMPTS[1]], greedy, seeded=True),  # greedy: the seed changes nothing
        batcher.submit([PROMPTS[0]], seeded, seeded=True),  # runs alone: reproducible
    ]
    merged = [job.result(timeout=60) for job in jobs]
    batcher.close()
    assert sorted(calls) == [(1, 1.0), (2, 0.0)]
    assert _view(merged[0] + merged[1]) == _view(local.generate(PROMPTS, greedy))
    assert _view(merged[2]) == _view(local.generate(PROMPTS[:1], seeded))


def test_a_local_teacher_that_cannot_be_loaded_names_itself(tmp_path):
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(TeacherError, match=rf"teacher '{missing}' cannot be loaded"):
        load_teacher(TeacherConfig(model=missing))


def test_bad_requests_get_openai_shaped_errors(url):
    def post(path, body, **kw):
        return httpx.post(url + path, json=body, **kw)

    bad_n = post("/completions", {"prompt": "x", "n": 0})
    assert bad_n.status_code == 400
    assert bad_n.json()["error"] | {"message": ""} == {
        "message": "", "type": "invalid_request_error", "param": "n", "code": 400
    }  # fmt: skip
    assert post("/completions", {"prompt": "x", "stream": True}).json()["error"]["param"] == (
        "stream"
    )
    assert post("/chat/completions", {"messages": []}).status_code == 400
    assert post("/completions", {"prompt": "x", "model": "gpt-9"}).status_code == 404
    garbage = httpx.post(url + "/completions", content=b"{not json")
    assert garbage.status_code == 400 and "not valid JSON" in garbage.json()["error"]["message"]
    assert httpx.get(url + "/nowhere").json()["error"]["type"] == "not_found_error"
    ok = post("/completions", {"prompt": "Hi", "max_tokens": 3, "temperature": 0, "logprobs": 1})
    choice = ok.json()["choices"][0]
    assert len(choice["logprobs"]["token_logprobs"]) == ok.json()["usage"]["completion_tokens"]


# --------------------------------------------------------------------------- bad servers


def test_nothing_listening_names_the_url():
    base = f"http://127.0.0.1:{free_port()}/v1"
    teacher = OpenAIEngine(base, model="m", max_retries=1)
    with pytest.raises(TeacherError, match=rf"teacher {base}: POST /completions: cannot connect"):
        teacher.generate(["hi"], SamplingParams(max_tokens=2))
    with pytest.raises(TeacherError, match=r"cannot connect.*\(1 attempt\)"):
        load_teacher(TeacherConfig(model=base, max_retries=0))  # fails at load, not later


@contextlib.contextmanager
def silent_server():
    """Accepts connections and never answers: (URL, accepted sockets)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.05)
    accepted: list[socket.socket] = []
    done = threading.Event()

    def run():
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                accepted.append(listener.accept()[0])

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1", accepted
    finally:
        done.set()
        thread.join()
        for s in [*accepted, listener]:
            s.close()


def test_a_server_that_never_answers_times_out_after_the_retries():
    with silent_server() as (base, accepted):
        teacher = OpenAIEngine(base, model="m", timeout_s=0.5, max_retries=1)
        started = time.monotonic()
        with pytest.raises(TeacherError, match=rf"{base}: .*no answer within 0.5s.*2 attempts"):
            teacher.generate(["hi"], SamplingParams(max_tokens=2))
        assert time.monotonic() - started < 5
        assert len(accepted) == 2  # one connection per attempt


@contextlib.contextmanager
def scripted_server(status: int, body: bytes):
    """An HTTP server answering every POST with ``status`` and ``body``: (URL, hits)."""
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            hits.append(self.path)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", hits
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize(
    ("status", "body", "expected", "attempts"),
    [
        (200, b"<html>this is not json", r"returned malformed JSON \(HTTP 200\): '<html>", 1),
        (200, json.dumps({"choices": [{"index": 0}]}).encode(), r"not an OpenAI response", 1),
        (200, json.dumps({"choices": []}).encode(), r"0 choices for n=1", 1),
        (503, json.dumps({"error": {"message": "overloaded"}}).encode(), r"HTTP 503: overl", 2),
        (401, json.dumps({"message": "bad key"}).encode(), r"refused \(HTTP 401\): bad key", 1),
    ],
)
def test_malformed_and_failed_answers_name_the_cause(status, body, expected, attempts):
    with scripted_server(status, body) as (base, hits):
        teacher = OpenAIEngine(base, model="m", max_retries=1)
        with pytest.raises(TeacherError, match=rf"teacher {base}: .*{expected}"):
            teacher.generate(["hi"], SamplingParams(max_tokens=2))
        assert len(hits) == attempts  # only 5xx is retried
