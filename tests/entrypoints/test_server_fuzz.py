"""Property test (Hypothesis): random JSON thrown at both generation endpoints of a real
`vllm serve` never gets a 5xx, the server keeps serving, and no KV block leaks. Bounded in
time (about 25 s of requests)."""
from __future__ import annotations

import json
import time

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models_util import tiny_model
from server_util import MODEL, Server, metric, served

TIME_BUDGET_S = 25.0
FIELDS = ["model", "prompt", "messages", "max_tokens", "max_completion_tokens", "n", "best_of",
          "temperature", "top_p", "top_k", "min_p", "seed", "stop", "stop_token_ids",
          "presence_penalty", "frequency_penalty", "repetition_penalty", "min_tokens",
          "ignore_eos", "stream", "stream_options", "logprobs", "top_logprobs", "echo",
          "suffix", "logit_bias", "chat_template", "chat_template_kwargs", "tools",
          "add_generation_prompt", "continue_final_message", "add_special_tokens", "user",
          "skip_special_tokens", "include_stop_str_in_output"]
TEXT = st.one_of(st.text(max_size=12), st.sampled_from(
    ["w1 w2 w3", "\ud800", "x\udfffy", "{{ 'a' * 9 }}", "", " ", MODEL, "\x00"]))
LEAF = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70),
                 st.integers(-3, 300), st.floats(allow_nan=True, allow_infinity=True), TEXT)
JSON = st.recursive(LEAF, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)), max_leaves=12)
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant",
                                                          "wizard"]),
                                 "content": st.one_of(TEXT, JSON)})
BODY = st.fixed_dictionaries(
    {"max_tokens": st.one_of(st.integers(1, 6), JSON)},
    optional={**{f: JSON for f in FIELDS if f != "max_tokens"},
              "prompt": st.one_of(TEXT, st.lists(st.integers(-5, 300), max_size=6), JSON),
              "messages": st.one_of(st.lists(MESSAGE, max_size=3), JSON),
              "n": st.one_of(st.integers(-1, 70), JSON)})
# Mostly well-formed bodies with values near and past the bounds: these reach the engine.
NEAR = {"temperature": st.one_of(st.floats(0, 2), st.just(1e-40)),
        "top_p": st.floats(0, 1.5), "top_k": st.integers(-2, 300), "min_p": st.floats(-0.5, 1),
        "seed": st.integers(-2 ** 64, 2 ** 64), "n": st.integers(0, 5),
        "stop": st.lists(st.sampled_from(["w1", "w9", ""]), max_size=2),
        "stop_token_ids": st.lists(st.integers(-1, 300), max_size=3),
        "presence_penalty": st.floats(-3, 3), "frequency_penalty": st.floats(-3, 3),
        "repetition_penalty": st.one_of(st.floats(0, 3), st.just(1e-40)),
        "min_tokens": st.integers(-1, 8), "ignore_eos": st.booleans(),
        "stream": st.booleans(), "logprobs": st.integers(-1, 25),
        "best_of": st.integers(0, 5), "echo": st.booleans()}
NEAR_COMPLETION = st.fixed_dictionaries(
    {"prompt": st.one_of(st.sampled_from(["w1 w2", "w5"]),
                         st.lists(st.integers(0, 260), min_size=1, max_size=6)),
     "max_tokens": st.integers(1, 6)}, optional=NEAR)
NEAR_CHAT = st.fixed_dictionaries(
    {"messages": st.lists(st.fixed_dictionaries({"role": st.just("user"),
                                                 "content": st.sampled_from(["w1", "w2 w3"])}),
                          min_size=1, max_size=2),
     "max_tokens": st.integers(1, 6)},
    optional={**{k: v for k, v in NEAR.items() if k not in ("logprobs", "echo")},
              "logprobs": st.booleans(), "top_logprobs": st.integers(-1, 25)})
REQUEST = st.one_of(
    st.tuples(st.just("/v1/completions"), NEAR_COMPLETION),
    st.tuples(st.just("/v1/chat/completions"), NEAR_CHAT),
    st.tuples(st.sampled_from(["/v1/completions", "/v1/chat/completions"]),
              st.one_of(BODY, JSON, st.binary(max_size=40))))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tiny_model("llama"), ["--trust-request-chat-template",
                                     "--chat-template-timeout", "1"],
               {}, str(tmp_path_factory.mktemp("fuzz") / "server.log"))
    yield from served(s)


def test_random_json_never_5xx(server):
    idle = server.metrics()
    free0 = metric(idle, "vllm:num_kv_blocks_free")
    end = time.monotonic() + TIME_BUDGET_S
    seen = {"sent": 0, "ok": 0}

    @settings(max_examples=400, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(REQUEST)
    def one(req):
        if time.monotonic() > end:
            return
        path, body = req
        data = body if isinstance(body, bytes) else json.dumps(body)
        r = requests.post(server.url + path, data=data, timeout=60,
                          headers={"Content-Type": "application/json"})
        seen["sent"] += 1
        assert r.status_code < 500, (path, data[:300], r.status_code, r.text[:300])
        if r.status_code == 200:
            seen["ok"] += 1
            if isinstance(body, dict) and body.get("stream") is True:
                assert b"data: [DONE]" in r.content
            else:
                assert "choices" in r.json()
        else:
            err = r.json()["error"]
            assert err["message"] and err["code"] in (r.status_code, "model_not_found")
    one()
    assert seen["sent"] >= 50 and seen["ok"] >= 10, seen
    # Still serving, and every block came back.
    r = server.post("/v1/completions", {"model": MODEL, "prompt": "w1 w2", "max_tokens": 3,
                                        "ignore_eos": True})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
    deadline = time.monotonic() + 30
    while True:
        m = server.metrics()
        if metric(m, "vllm:num_requests_running") == 0 and \
                metric(m, "vllm:num_kv_blocks_free") == free0:
            break
        assert time.monotonic() < deadline, m
        time.sleep(0.1)
    assert requests.get(server.url + "/health", timeout=5).status_code == 200
    print(seen)
