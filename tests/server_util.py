"""A real `vllm serve` subprocess on 127.0.0.1 for the entrypoint tests, and small helpers
(Prometheus samples, OpenAI error bodies)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

openai = pytest.importorskip("openai")   # the client is a test extra; GPU hosts may lack it
import requests
from prometheus_client.parser import text_string_to_metric_families

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = "tiny"
API_KEY = "sk-test-key"
MAX_MODEL_LEN = 256
NGRAM = {"method": "ngram", "num_speculative_tokens": 3}
# Extra fields the openai client forwards as-is: random tiny models emit EOS (id 2) at random,
# ignoring it makes every length deterministic.
NO_EOS = {"ignore_eos": True}


# ---------------------------------------------------------------------------- server handling
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model: str, extra_args: list[str], env: dict, log_path: str,
                 api_key: str | None = None):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key = api_key
        self.log_path = log_path
        cmd = [sys.executable, "-m", "vllm.entrypoints.cli", "serve", model,
               "--host", "127.0.0.1", "--port", str(self.port),
               "--served-model-name", MODEL, "--max-model-len", str(MAX_MODEL_LEN),
               "--max-num-seqs", "64", "--seed", "0", "--enforce-eager",
               "--disable-uvicorn-access-log", *extra_args]
        if api_key:
            cmd += ["--api-key", api_key]
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = REPO + os.pathsep + full_env.get("PYTHONPATH", "")
        full_env.setdefault("VLLM_CPU_KVCACHE_SPACE", "0.25")
        full_env.update(env)
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(cmd, env=full_env, stdout=self._log,
                                     stderr=subprocess.STDOUT, cwd=REPO)

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()[-6000:]

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if requests.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not ready after {timeout} s:\n{self.log()}")

    def stop(self, sig=signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"server did not stop within {timeout} s:\n{self.log()}")
        self._log.close()
        return self.proc.returncode

    def client(self, **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=self.api_key or "EMPTY",
                             max_retries=0, timeout=60, **kw)

    def async_client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.url + "/v1", api_key=self.api_key or "EMPTY",
                                  max_retries=0, timeout=60)

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def post(self, path: str, body, **kw) -> requests.Response:
        data = body if isinstance(body, (str, bytes)) else json.dumps(body)
        return requests.post(self.url + path, data=data, timeout=60,
                             headers={"Content-Type": "application/json", **self.headers()},
                             **kw)

    def metrics(self) -> str:
        r = requests.get(self.url + "/metrics", timeout=30)
        assert r.status_code == 200, r.text
        return r.text


def served(server: "Server", no_traceback: bool = True):
    """The body of a module-scoped server fixture: yields the server once it is ready, then
    stops it and asserts a clean exit (and, by default, no traceback in its log)."""
    try:
        server.wait_ready()
        yield server
    finally:
        code = server.stop()
    assert code == 0, server.log()
    if no_traceback:
        assert "Traceback" not in server.log(), server.log()


def metric(text: str, name: str, **labels) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    total, found = 0.0, False
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
                found = True
    assert found, f"no sample {name} {labels} in /metrics"
    return total




def check_error(r: requests.Response, status: int, param=None, code=None):
    """An OpenAI-style error body: {"error": {"message", "type", "param", "code"}}."""
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"}
    assert err["code"] == (status if code is None else code), err
    assert isinstance(err["message"], str) and err["message"]
    if param is not None:
        assert err["param"] == param, err
    return err
