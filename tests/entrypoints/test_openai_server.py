"""`vllm serve` end to end: real servers (subprocesses) on 127.0.0.1 with a tiny random Llama,
driven by the official `openai` client and plain HTTP (requests)."""
from __future__ import annotations

import asyncio
import json
import signal
import socket
import threading
import time

import pytest

openai = pytest.importorskip("openai")   # the client is a test extra; GPU hosts may lack it
import pytest
import requests

from models_util import tiny_model
from server_util import (API_KEY, MAX_MODEL_LEN, MODEL, NGRAM, NO_EOS, Server, check_error,
                         metric)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """Both servers, started in parallel: the main one, and one with n-gram speculative
    decoding, NWOR staging and an API key."""
    model = tiny_model("llama")
    logs = tmp_path_factory.mktemp("server_logs")
    main = Server(model, [], {}, str(logs / "main.log"))
    spec = Server(model, ["--speculative-config", json.dumps(NGRAM)],
                  {"VLLM_NWOR_MODE": "stage"}, str(logs / "spec.log"), api_key=API_KEY)
    try:
        main.wait_ready()
        spec.wait_ready()
        yield main, spec
    finally:
        codes = [s.stop() for s in (main, spec)]
    assert codes == [0, 0], (codes, main.log(), spec.log())
    for s in (main, spec):
        assert "Traceback" not in s.log() and "ERROR" not in s.log(), s.log()


@pytest.fixture(scope="module")
def server(servers) -> Server:
    return servers[0]


@pytest.fixture(scope="module")
def spec_server(servers) -> Server:
    return servers[1]


def words(n: int, start: int = 3) -> str:
    return " ".join(f"w{start + i % 200}" for i in range(n))


# ---------------------------------------------------------------------------- basic endpoints
def test_health_version_models(server):
    assert requests.get(server.url + "/health").status_code == 200
    v = requests.get(server.url + "/version").json()
    import vllm
    assert v == {"version": vllm.__version__}
    models = server.client().models.list()
    assert [m.id for m in models.data] == [MODEL]
    raw = requests.get(server.url + "/v1/models").json()
    assert raw["data"][0]["max_model_len"] == MAX_MODEL_LEN


def test_completion_openai_client(server):
    c = server.client()
    r = c.completions.create(model=MODEL, prompt="w1 w2 w3", max_tokens=8, temperature=0,
                             extra_body=NO_EOS)
    assert r.object == "text_completion" and r.model == MODEL
    assert len(r.choices) == 1 and r.choices[0].finish_reason == "length"
    assert r.choices[0].text.strip()
    assert r.usage.prompt_tokens == 3 and r.usage.completion_tokens == 8
    assert r.usage.total_tokens == 11
    # Greedy is deterministic; token-id prompts and lists of prompts work too.
    r2 = c.completions.create(model=MODEL, prompt=[[4, 5, 6], "w1 w2 w3"], max_tokens=8,
                              temperature=0, extra_body=NO_EOS)
    assert [ch.index for ch in r2.choices] == [0, 1]
    assert r2.choices[0].text == r2.choices[1].text == r.choices[0].text
    assert r2.usage.prompt_tokens == 6 and r2.usage.completion_tokens == 16


def test_chat_openai_client(server):
    c = server.client()
    msgs = [{"role": "system", "content": "w5 w6"}, {"role": "user", "content": "w7 w8 w9"}]
    r = c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=6, temperature=0,
                                  extra_body=NO_EOS)
    assert r.object == "chat.completion"
    msg = r.choices[0].message
    assert msg.role == "assistant" and msg.content.strip()
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 6 and r.usage.prompt_tokens > 0
    # max_completion_tokens is the newer spelling of max_tokens.
    r2 = c.chat.completions.create(model=MODEL, messages=msgs, max_completion_tokens=3,
                                   temperature=0, extra_body=NO_EOS)
    assert r2.usage.completion_tokens == 3
    assert msg.content.startswith(r2.choices[0].message.content)


def test_stream_equals_non_stream(server):
    c = server.client()
    kw = dict(model=MODEL, prompt="w10 w11 w12 w13", max_tokens=12, temperature=0.9, seed=1234,
              n=2, extra_body=NO_EOS)
    full = c.completions.create(**kw)
    texts = {ch.index: ch.text for ch in full.choices}
    assert len(texts) == 2
    got = {0: "", 1: ""}
    finish = {}
    for chunk in c.completions.create(stream=True, stream_options={"include_usage": True},
                                      **kw):
        for ch in chunk.choices:
            got[ch.index] += ch.text
            if ch.finish_reason:
                finish[ch.index] = ch.finish_reason
        if chunk.usage is not None:
            usage = chunk.usage
    assert got == texts
    assert finish == {0: "length", 1: "length"}
    assert usage.completion_tokens == 24

    msgs = [{"role": "user", "content": "w20 w21 w22"}]
    ckw = dict(model=MODEL, messages=msgs, max_tokens=10, temperature=0.7, seed=7,
               extra_body=NO_EOS)
    full = c.chat.completions.create(**ckw).choices[0].message.content
    parts, roles = [], []
    for chunk in c.chat.completions.create(stream=True, **ckw):
        for ch in chunk.choices:
            if ch.delta.role:
                roles.append(ch.delta.role)
            parts.append(ch.delta.content or "")
    assert roles == ["assistant"]
    assert "".join(parts) == full


def test_stop_strings_and_logprobs(server):
    c = server.client()
    base = c.completions.create(model=MODEL, prompt="w30 w31 w32", max_tokens=10,
                                temperature=0, extra_body=NO_EOS).choices[0].text
    toks = base.split()
    stop = " ".join(toks[3:5])      # a two-word stop string in the middle
    expect = base[:base.index(stop)]
    r = c.completions.create(model=MODEL, prompt="w30 w31 w32", max_tokens=10, temperature=0,
                             stop=[stop], extra_body=NO_EOS)
    assert r.choices[0].text == expect and r.choices[0].finish_reason == "stop"
    streamed = "".join(ch.text for chunk in c.completions.create(
        model=MODEL, prompt="w30 w31 w32", max_tokens=10, temperature=0, stop=[stop],
        stream=True, extra_body=NO_EOS) for ch in chunk.choices)
    assert streamed == expect

    r = c.completions.create(model=MODEL, prompt="w30 w31 w32", max_tokens=5, temperature=0,
                             logprobs=2, extra_body=NO_EOS)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5
    assert all(x <= 0 for x in lp.token_logprobs)
    assert "".join(lp.tokens).replace(" ", "") == r.choices[0].text.replace(" ", "")

    r = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "w3"}],
                                  max_tokens=4, temperature=0, logprobs=True, top_logprobs=3,
                                  extra_body=NO_EOS)
    content = r.choices[0].logprobs.content
    assert len(content) == 4 and all(len(e.top_logprobs) == 3 for e in content)
    assert all(e.logprob <= 0 for e in content)


# ---------------------------------------------------------------------------- concurrency
def test_64_concurrent_streams_and_metrics(server):
    before = server.metrics()
    prompts = [words(3 + i % 5, start=i) for i in range(64)]
    max_toks = [4 + i % 9 for i in range(64)]

    async def one(client, i):
        text, usage, finish = "", None, None
        stream = await client.completions.create(
            model=MODEL, prompt=prompts[i], max_tokens=max_toks[i], temperature=0.8, seed=i,
            stream=True, stream_options={"include_usage": True}, extra_body=NO_EOS)
        async for chunk in stream:
            for ch in chunk.choices:
                text += ch.text
                finish = ch.finish_reason or finish
            if chunk.usage is not None:
                usage = chunk.usage
        return text, usage, finish

    async def run_all():
        client = server.async_client()
        try:
            return await asyncio.gather(*(one(client, i) for i in range(64)))
        finally:
            await client.close()

    t0 = time.monotonic()
    results = asyncio.run(run_all())
    elapsed = time.monotonic() - t0
    for i, (text, usage, finish) in enumerate(results):
        assert finish == "length", (i, finish)
        assert usage.completion_tokens == max_toks[i], (i, usage)
        assert usage.prompt_tokens == len(prompts[i].split())
        assert len(text.split()) <= max_toks[i]

    after = server.metrics()

    def delta(name, **labels):
        try:
            b = metric(before, name, **labels)
        except AssertionError:
            b = 0.0
        return metric(after, name, **labels) - b
    assert delta("vllm:request_success_total", finished_reason="length") == 64
    assert delta("vllm:prompt_tokens_total") == sum(len(p.split()) for p in prompts)
    assert delta("vllm:generation_tokens_total") == sum(max_toks)
    assert delta("vllm:time_to_first_token_seconds_count") == 64
    assert delta("vllm:e2e_request_latency_seconds_count") == 64
    assert delta("vllm:inter_token_latency_seconds_count") > 0
    assert metric(after, "vllm:num_requests_running") == 0
    assert metric(after, "vllm:num_requests_waiting") == 0
    assert metric(after, "vllm:kv_cache_usage_perc") == 0
    print(f"64 concurrent streams in {elapsed:.2f} s")


# ---------------------------------------------------------------------------- errors
BAD_REQUESTS = [
    ("/v1/completions", {"model": MODEL, "prompt": "w1", "max_tokens": -1}, "max_tokens"),
    ("/v1/completions", {"model": MODEL, "prompt": "w1", "temperature": -0.5}, "temperature"),
    ("/v1/completions", {"model": MODEL, "prompt": "w1", "top_p": 0}, "top_p"),
    ("/v1/completions", {"model": MODEL, "prompt": "w1", "n": 0}, "n"),
    ("/v1/completions", {"model": MODEL, "prompt": "w1", "max_tokens": "ten"}, "max_tokens"),
    ("/v1/completions", {"model": MODEL, "prompt": "w1", "logprobs": 1000}, "logprobs"),
    ("/v1/completions", {"model": MODEL, "prompt": words(MAX_MODEL_LEN + 10)}, "prompt"),
    ("/v1/completions", {"model": MODEL, "prompt": words(200), "max_tokens": 100},
     "max_tokens"),
    ("/v1/completions", {"model": MODEL}, "prompt"),
    ("/v1/completions", {"model": MODEL, "prompt": [5, 99999]}, "prompt"),
    ("/v1/completions", {"model": MODEL, "prompt": "w1", "stop": [""]}, "stop"),
    ("/v1/completions", {"model": MODEL, "prompt": "w1", "stream": True,
                         "max_tokens": 0}, "max_tokens"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "w1"}],
                              "temperature": -1}, "temperature"),
    ("/v1/chat/completions", {"model": MODEL, "messages": []}, "messages"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "w1"}],
                              "top_logprobs": 2}, "top_logprobs"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "wizard",
                                                            "content": "w1"}]}, "messages"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [
        {"role": "user", "content": words(MAX_MODEL_LEN + 10)}]}, "messages"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "w1"}],
                              "chat_template": "{{ 'x' }}"}, "chat_template"),
    ("/v1/completions", "{not json", None),
    ("/v1/completions", "[1, 2]", None),
]


def test_bad_requests_get_400_and_server_keeps_serving(server):
    for path, body, param in BAD_REQUESTS:
        check_error(server.post(path, body), 400, param)
    r = server.post("/v1/completions", {"model": MODEL, "prompt": "w1 w2", "max_tokens": 2})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
    # The openai client maps them to its exceptions.
    c = server.client()
    with pytest.raises(openai.BadRequestError) as ei:
        c.completions.create(model=MODEL, prompt="w1", max_tokens=-3)
    assert ei.value.status_code == 400
    # An unknown model is 404 model_not_found, as OpenAI answers.
    check_error(server.post("/v1/completions", {"model": "no-such-model", "prompt": "w1"}),
                404, "model", code="model_not_found")
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="nope", messages=[{"role": "user", "content": "w1"}])
    # Unknown routes / methods.
    check_error(requests.get(server.url + "/v1/nothing-here"), 404)
    check_error(requests.post(server.url + "/nope", data="{}"), 404)
    check_error(requests.get(server.url + "/v1/completions"), 405)
    # Still serving.
    r = c.completions.create(model=MODEL, prompt="w1 w2", max_tokens=2, extra_body=NO_EOS)
    assert r.usage.completion_tokens == 2


# ---------------------------------------------------------------------------- disconnects
def _wait_metrics(server: Server, cond, timeout=30.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = server.metrics()
        if cond(text):
            return text
        if time.monotonic() > deadline:
            raise AssertionError("metrics never reached the expected state:\n" + text)
        time.sleep(0.1)


def test_disconnected_stream_frees_blocks(server):
    idle = _wait_metrics(server, lambda t: metric(t, "vllm:num_requests_running") == 0)
    free0 = metric(idle, "vllm:num_kv_blocks_free")
    aborts0 = metric(idle, "vllm:request_success_total", finished_reason="abort") \
        if "finished_reason=\"abort\"" in idle else 0
    assert free0 > 0
    body = {"model": MODEL, "prompt": words(40, start=50), "max_tokens": MAX_MODEL_LEN - 41,
            "temperature": 0, "stream": True, "ignore_eos": True}
    r = server.post("/v1/completions", body, stream=True)
    assert r.status_code == 200
    lines = r.iter_lines()
    got = 0
    for line in lines:
        if line.startswith(b"data: {"):
            got += 1
            if got == 3:
                break
    busy = server.metrics()
    assert metric(busy, "vllm:num_requests_running") == 1
    assert metric(busy, "vllm:num_kv_blocks_free") < free0
    r.close()      # the client goes away mid-stream
    after = _wait_metrics(server, lambda t: metric(t, "vllm:num_requests_running") == 0
                          and metric(t, "vllm:num_kv_blocks_free") == free0)
    assert metric(after, "vllm:request_success_total", finished_reason="abort") == aborts0 + 1
    # It was aborted, not run to completion.
    assert metric(after, "vllm:generation_tokens_total") - metric(busy,
                                                                  "vllm:generation_tokens_total") \
        < MAX_MODEL_LEN - 41

    # A non-streaming request whose client goes away is aborted too.
    body = json.dumps({"model": MODEL, "prompt": "w1 w2", "max_tokens": MAX_MODEL_LEN - 3,
                       "n": 16, "ignore_eos": True}).encode()
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                 b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    _wait_metrics(server, lambda t: metric(t, "vllm:num_requests_running") == 16)
    sock.close()
    after = _wait_metrics(server, lambda t: metric(t, "vllm:num_requests_running") == 0
                          and metric(t, "vllm:num_kv_blocks_free") == free0)
    assert metric(after, "vllm:request_success_total", finished_reason="abort") == aborts0 + 2


# ---------------------------------------------------------------------------- API key, NWOR
def test_api_key(spec_server):
    s = spec_server
    body = json.dumps({"model": MODEL, "prompt": "w1", "max_tokens": 2})
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        r = requests.post(s.url + "/v1/completions", data=body, headers=headers)
        check_error(r, 401)
    check_error(requests.get(s.url + "/v1/models", headers={"Authorization": "Bearer x"}), 401)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=s.url + "/v1", api_key="wrong",
                      max_retries=0).models.list()
    assert s.client().models.list().data[0].id == MODEL
    r = requests.post(s.url + "/v1/completions", data=body, headers=s.headers())
    assert r.status_code == 200
    # Health and metrics stay open (as upstream).
    assert requests.get(s.url + "/health").status_code == 200
    assert requests.get(s.url + "/metrics").status_code == 200


def test_nwor_spec_decode_metrics(spec_server):
    c = spec_server.client()
    pattern = "w5 w6 w7 w8 w9 " * 8     # repetition: the n-gram proposer finds drafts
    kw = dict(model=MODEL, prompt=pattern, max_tokens=24, temperature=0, extra_body=NO_EOS)
    full = c.completions.create(**kw).choices[0].text
    streamed = "".join(ch.text for chunk in c.completions.create(stream=True, **kw)
                       for ch in chunk.choices)
    assert streamed == full
    r = c.completions.create(model=MODEL, prompt=[pattern, "w40 w41 w42 " * 10],
                             max_tokens=24, temperature=0, extra_body=NO_EOS)
    assert all(ch.finish_reason == "length" for ch in r.choices)
    assert r.usage.completion_tokens == 48
    assert r.choices[0].text == full        # greedy spec decode does not depend on the batch
    m = spec_server.metrics()
    assert metric(m, "vllm:spec_decode_num_drafts_total") > 0
    assert metric(m, "vllm:spec_decode_num_draft_tokens_total") > 0
    assert metric(m, "vllm:nwor_tokens_staged_total", mode="stage") > 0
    assert metric(m, "vllm:nwor_windows_total", mode="stage") > 0
    assert metric(m, "vllm:nwor_tokens_committed_total", mode="stage") >= 0
    assert metric(m, "vllm:spec_decode_num_accepted_tokens_per_pos_total", position="0") >= 0
    assert metric(m, "vllm:generation_tokens_total") >= 72


def test_chained_spec_server_streams_what_no_spec_returns(server, tmp_path):
    """A server with chained speculative steps (n-gram, asynchronous scheduling: tokens reach
    the host one step late) streams, under 8 concurrent clients arriving together and later,
    exactly the greedy text the no-spec server returns, and drafts."""
    model = tiny_model("llama")
    chained = Server(model, ["--async-scheduling", "--speculative-config", json.dumps(NGRAM)],
                     {}, str(tmp_path / "chained.log"))
    try:
        chained.wait_ready()
        assert "Chained speculative steps on" in chained.log()
        prompts = [("w5 w6 w7 w8 " * (2 + i % 3)) + f"w{30 + i}" for i in range(8)]
        kw = dict(model=MODEL, max_tokens=20, temperature=0, extra_body=NO_EOS)
        want = [server.client().completions.create(prompt=p, **kw).choices[0].text
                for p in prompts]
        got = [None] * len(prompts)

        def stream(i: int) -> None:
            if i >= 4:
                time.sleep(0.05 * i)        # later arrivals join running chained steps
            got[i] = "".join(ch.text for chunk in chained.client().completions.create(
                prompt=prompts[i], stream=True, **kw) for ch in chunk.choices)

        threads = [threading.Thread(target=stream, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert got == want
        assert metric(chained.metrics(), "vllm:spec_decode_num_drafts_total") > 0
    finally:
        code = chained.stop()
    assert code == 0, chained.log()
    assert "Traceback" not in chained.log(), chained.log()


# ---------------------------------------------------------------------------- shutdown
def test_graceful_shutdown_with_inflight_stream(tmp_path):
    """SIGTERM with a stream in flight and no grace period: the stream ends with an error
    event and [DONE], the process exits 0, nothing hangs."""
    s = Server(tiny_model("llama"), ["--graceful-shutdown-timeout", "0"], {},
               str(tmp_path / "shutdown.log"))
    try:
        s.wait_ready()
        body = {"model": MODEL, "prompt": "w1 w2", "max_tokens": MAX_MODEL_LEN - 2,
                "temperature": 0, "stream": True, "ignore_eos": True}
        r = s.post("/v1/completions", body, stream=True)
        events = []
        done = threading.Event()

        def read():
            try:
                for line in r.iter_lines():
                    if line.startswith(b"data: "):
                        events.append(line[6:])
            except requests.RequestException as e:
                events.append(repr(e).encode())
            finally:
                done.set()
        t = threading.Thread(target=read, daemon=True)
        t.start()
        while not events:
            time.sleep(0.01)
        t0 = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        assert done.wait(20), "the stream hung after SIGTERM"
        assert s.proc.wait(20) == 0, s.log()
        assert time.monotonic() - t0 < 20
        # The stream ended properly: an error event (no grace period: the ~250 tokens left
        # cannot finish), then [DONE].
        assert events[-1] == b"[DONE]", events[-3:]
        last = json.loads(events[-2])
        assert last["error"]["code"] == 503, last
        assert "shutting down" in last["error"]["message"]
        # Nothing was cut off mid-way: no traceback / cancellation in the log.
        assert "Traceback" not in s.log(), s.log()
    finally:
        s.stop(signal.SIGKILL)
