"""`vllm bench serve` against a real `vllm serve` on 127.0.0.1, tiny workloads: the numbers
it reports add up (request and token counts, percentiles ordered) and land in the JSON."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from models_util import tiny_model
from server_util import REPO, Server, served


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tiny_model("llama"), [], {}, str(tmp_path_factory.mktemp("bench") / "srv.log"))
    yield from served(s, no_traceback=False)


def bench(server: Server, tmp_path, *args: str) -> dict:
    out = tmp_path / "result.json"
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-m", "vllm.entrypoints.cli", "bench", "serve",
                        "--base-url", server.url, "--result-file", str(out), "--seed", "1",
                        *args], capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Serving Benchmark Result" in p.stdout
    return json.loads(out.read_text())


def _ordered(res: dict, name: str) -> None:
    assert 0 < res[f"median_{name}_ms"] <= res[f"p90_{name}_ms"] <= res[f"p99_{name}_ms"], res


def test_random_dataset_with_probe(server, tmp_path):
    res = bench(server, tmp_path, "--tokenizer", tiny_model("llama"), "--dataset-name",
                "random", "--num-prompts", "12", "--random-input-len", "8",
                "--random-output-len", "10", "--ignore-eos", "--max-concurrency", "4",
                "--probe-request", "--probe-output-len", "4", "--disable-tqdm")
    assert res["completed"] == 12 and res["failed"] == 0
    assert res["total_input_tokens"] == 12 * 8
    assert res["total_output_tokens"] == 12 * 10
    assert res["output_throughput"] == pytest.approx(120 / res["duration_s"])
    assert res["max_concurrency"] == 4 and res["model"] == "tiny"
    for m in ("ttft", "tpot", "itl", "e2el"):
        _ordered(res, m)
    probe = res["probe"]
    assert probe["num_probes"] >= 1 and probe["failed"] == 0
    assert probe["total_output_tokens"] == 4 * probe["completed"]
    assert res["command"].startswith("vllm bench serve --base-url")


def test_prompt_set_through_chat(server, tmp_path):
    res = bench(server, tmp_path, "--backend", "openai-chat", "--dataset-name", "short",
                "--num-prompts", "5", "--output-len", "6", "--ignore-eos",
                "--request-rate", "50", "--metric-percentiles", "50,99")
    assert res["completed"] == 5 and res["failed"] == 0
    assert res["total_output_tokens"] == 30 and res["total_input_tokens"] > 5
    assert res["endpoint"] == "/v1/chat/completions" and res["request_rate"] == 50
    assert "p99_ttft_ms" in res and "p90_ttft_ms" not in res
