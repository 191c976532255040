"""`vllm serve --data-parallel-size 2` (and --tensor-parallel-size 2): a real server on
127.0.0.1 with a real HTTP client. Concurrent requests are served by both replicas (per-replica
and summed metrics say so), and SIGINT stops the server and every process below it within
seconds."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dist_util import DEVICES, PYTHON, REPO, descendants, free_port, subprocess_env, wait_gone
from models_util import tiny_model

pytest.importorskip("fastapi")      # the server's dependencies (absent on a bare GPU image)
pytest.importorskip("uvicorn")


class Server:
    def __init__(self, args: list[str], log_path: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        cmd = [PYTHON, "-m", "vllm.entrypoints.cli", "serve", tiny_model("llama"),
               "--host", "127.0.0.1", "--port", str(self.port), "--served-model-name", "tiny",
               "--max-model-len", "256", "--disable-uvicorn-access-log", *args]
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(cmd, env=subprocess_env(), cwd=REPO, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()[-6000:]

    def wait_ready(self, timeout: float = 240.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"server not ready after {timeout} s:\n{self.log()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._log.close()


def _samples(text: str, name: str) -> dict[str, float]:
    """engine label -> value (summed over the other labels)."""
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name:
                e = s.labels.get("engine", "")
                out[e] = out.get(e, 0.0) + s.value
    return out


async def _complete_all(url: str, n: int) -> list[dict]:
    body = {"model": "tiny", "max_tokens": 12, "temperature": 0.0, "ignore_eos": True}
    async with httpx.AsyncClient(timeout=120) as client:
        rs = await asyncio.gather(*[
            client.post(url + "/v1/completions", json={**body, "prompt": [5 + i, 6, 7, 8]})
            for i in range(n)])
    for r in rs:
        assert r.status_code == 200, r.text
    return [r.json() for r in rs]


def _stop_within(server: Server, seconds: float) -> None:
    below = descendants(server.proc.pid)
    assert below, "expected worker / replica processes below the server"
    t0 = time.monotonic()
    os.killpg(server.proc.pid, signal.SIGINT)          # Ctrl-C in the server's terminal
    try:
        rc = server.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"server ignored SIGINT:\n{server.log()}") from None
    took = time.monotonic() - t0
    assert rc == 0, server.log()
    assert took < seconds, f"server took {took:.1f} s to stop"
    assert not wait_gone(below, 3.0), f"left behind: {below}\n{server.log()}"


@pytest.mark.parametrize("device", DEVICES)
def test_data_parallel_2_serves_from_both_replicas(device, tmp_path):
    server = Server(["--data-parallel-size", "2", "--device", device, "--dtype", "float32",
                     "--enforce-eager"], str(tmp_path / "dp.log"))
    try:
        server.wait_ready()
        outs = asyncio.run(_complete_all(server.url, 16))
        # Greedy: a prompt gets the same text whichever replica serves it (same weights).
        again = asyncio.run(_complete_all(server.url, 16))
        assert [o["choices"][0]["text"] for o in again] == \
            [o["choices"][0]["text"] for o in outs]
        text = httpx.get(server.url + "/metrics", timeout=30).text
        done = _samples(text, "vllm:request_success_total")
        gen = _samples(text, "vllm:generation_tokens_total")
        assert done["0"] > 0 and done["1"] > 0, done          # both replicas served
        assert done["all"] == done["0"] + done["1"] == 32
        assert gen["all"] == gen["0"] + gen["1"] == 32 * 12
        _stop_within(server, 15.0)
    finally:
        server.kill()


def test_data_parallel_size_is_validated(tmp_path):
    server = Server(["--data-parallel-size", "0"], str(tmp_path / "bad.log"))
    try:
        rc = server.proc.wait(timeout=120)
    finally:
        server.kill()
    assert rc != 0 and "data_parallel_size" in server.log()


@pytest.mark.parametrize("device", DEVICES)
def test_tensor_parallel_2_server_stops_on_sigint(device, tmp_path):
    server = Server(["--tensor-parallel-size", "2", "--device", device, "--dtype", "float32",
                     "--enforce-eager"], str(tmp_path / "tp.log"))
    try:
        server.wait_ready()
        asyncio.run(_complete_all(server.url, 4))
        _stop_within(server, 15.0)
    finally:
        server.kill()
