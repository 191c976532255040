"""Tensor parallelism, TP=2 against TP=1: greedy tokens (also with speculative decoding, NWOR
and SCV), shutdown within seconds with no process left behind (engine, an exception in the
user's script, Ctrl-C), and a worker's failure reported as an error naming its rank."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from dist_util import DEVICES, PYTHON, REPO, alive, descendants, subprocess_env, wait_gone
from models_util import tiny_model
from vllm import LLM, SamplingParams
from vllm.v1.engine.tp_executor import TPWorkerError

GREEDY = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
# Repeating patterns so that n-gram drafts get accepted (and rejected) often.
PROMPTS = [{"prompt_token_ids": p} for p in
           ([5, 6, 7, 8] * 4, [40, 41, 42, 40, 41, 42, 40], [100, 3, 100, 3, 100, 9, 10])]


def _kw(device: str, graphs: bool = False) -> dict:
    # graphs=True on CUDA: the all-reduces are captured inside the model's CUDA graphs
    # (elsewhere eager: capture costs device time and is not what those tests check).
    return {"device": device, "dtype": "float32", "max_model_len": 256,
            "enforce_eager": not (graphs and device == "cuda")}


def _ids(outs):
    return [list(o.outputs[0].token_ids) for o in outs]


def _worker_pids(llm) -> list[int]:
    return [p.pid for p in llm.llm_engine.executor.workers.procs.values()]


def _spawned_children() -> set[int]:
    """multiprocessing workers still below this process (the resource tracker excluded)."""
    out = set()
    for pid in descendants(os.getpid()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"spawn_main" in f.read():
                    out.add(pid)
        except OSError:
            pass
    return out


@pytest.mark.parametrize("device", DEVICES)
def test_tp2_greedy_and_fast_clean_shutdown(device):
    path = tiny_model("llama")
    ref = LLM(path, **_kw(device, graphs=True))
    tp1 = _ids(ref.generate(PROMPTS, GREEDY, use_tqdm=False))
    ref.shutdown()
    llm = LLM(path, tensor_parallel_size=2, **_kw(device, graphs=True))
    pids = _worker_pids(llm)
    assert len(pids) == 1 and alive(pids)
    try:
        assert _ids(llm.generate(PROMPTS, GREEDY, use_tqdm=False)) == tp1
        if device == "cuda":
            graphs = llm.llm_engine.executor.driver_runner.graphs
            assert graphs.enabled and graphs.num_replays > 0   # NCCL inside CUDA graphs
    finally:
        t0 = time.monotonic()
        llm.shutdown()
        took = time.monotonic() - t0
    assert took < 5.0, f"shutdown took {took:.1f} s"
    assert not wait_gone(pids, 2.0)
    assert not _spawned_children()
    llm.shutdown()                                  # idempotent


@pytest.mark.parametrize("device", DEVICES)
def test_tp2_spec_decode_nwor_scv_equal_tp1(device):
    path = tiny_model("llama")
    spec = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 2}
    kw = dict(_kw(device), speculative_config=spec, nwor_mode="stage", scv_mode="vectorized")
    plain = LLM(path, **_kw(device))
    want = _ids(plain.generate(PROMPTS, GREEDY, use_tqdm=False))
    plain.shutdown()
    llm = LLM(path, tensor_parallel_size=2, **kw)
    try:
        got = _ids(llm.generate(PROMPTS, GREEDY, use_tqdm=False))
        stats = llm.llm_engine.stats
        assert stats.spec.num_draft_tokens > 0 and stats.nwor.windows > 0
    finally:
        llm.shutdown()
    assert got == want          # lossless under TP=2, with NWOR staging and SCV


@pytest.mark.parametrize("device", DEVICES)
def test_worker_failure_names_the_rank(device, monkeypatch):
    monkeypatch.setenv("VLLM_TP_FAULT_INJECT", "1:execute_model:3")
    # On CUDA the driver is then replaying a CUDA graph whose all-reduce waits for rank 1.
    llm = LLM(tiny_model("llama"), tensor_parallel_size=2, **_kw(device, graphs=True))
    pids = _worker_pids(llm)
    t0 = time.monotonic()
    with pytest.raises(TPWorkerError, match="rank 1") as ei:
        llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    assert time.monotonic() - t0 < 10.0
    assert "injected fault" in str(ei.value) and ei.value.rank == 1
    with pytest.raises(TPWorkerError, match="rank 1"):     # the executor stays failed
        llm.generate(PROMPTS[:1], GREEDY, use_tqdm=False)
    t0 = time.monotonic()
    llm.shutdown()
    assert time.monotonic() - t0 < 5.0
    assert not wait_gone(pids, 2.0)


def test_driver_failure_stops_the_executor(monkeypatch):
    """Rank 0 fails alone (the workers wait in a collective it never reaches): the error comes
    back at once, later calls refuse instead of hanging, shutdown still takes seconds."""
    monkeypatch.setenv("VLLM_TP_FAULT_INJECT", "0:execute_model:2")
    llm = LLM(tiny_model("llama"), tensor_parallel_size=2, **_kw("cpu"))
    pids = _worker_pids(llm)
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="injected fault"):
        llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    assert time.monotonic() - t0 < 10.0
    with pytest.raises(TPWorkerError, match="rank 0 failed: the driver failed"):
        llm.generate(PROMPTS[:1], GREEDY, use_tqdm=False)
    t0 = time.monotonic()
    llm.shutdown()
    assert time.monotonic() - t0 < 8.0
    assert not wait_gone(pids, 2.0)


def test_fault_injection_spec_is_validated(monkeypatch):
    monkeypatch.setenv("VLLM_TP_FAULT_INJECT", "one:execute_model")
    with pytest.raises(Exception, match="VLLM_TP_FAULT_INJECT"):
        LLM(tiny_model("llama"), tensor_parallel_size=2, enforce_eager=True, device="cpu")
    assert not wait_gone(_spawned_children(), 10.0)


_SCRIPT = """
import json, sys
from models_util import tiny_model
from vllm import LLM, SamplingParams
if __name__ == "__main__":
    llm = LLM(tiny_model("llama"), tensor_parallel_size=2, enforce_eager=True,
              device=sys.argv[2], max_model_len=256)
    pids = [p.pid for p in llm.llm_engine.executor.workers.procs.values()]
    print("PIDS " + json.dumps(pids), flush=True)
    if sys.argv[1] == "raise":
        raise RuntimeError("the user's script failed")
    sp = SamplingParams(temperature=0.0, max_tokens=200, ignore_eos=True)
    while True:
        print("GENERATING", flush=True)
        llm.generate([[5, 6, 7]] * 4, sp, use_tqdm=False)
"""


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("how", ["raise", "ctrl_c"])
def test_script_exit_leaves_no_process(how, device, tmp_path):
    script = tmp_path / "user_script.py"
    script.write_text(_SCRIPT)
    proc = subprocess.Popen([PYTHON, str(script), how, device], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=subprocess_env(), cwd=REPO,
                            start_new_session=True, text=True)
    lines, pids = [], []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("PIDS "):
                pids = json.loads(line[5:])
                if how == "raise":
                    break
            if line.startswith("GENERATING") and how == "ctrl_c":
                time.sleep(1.0)
                t0 = time.monotonic()
                os.killpg(proc.pid, signal.SIGINT)    # what the terminal does on Ctrl-C
                break
        else:
            raise AssertionError("".join(lines[-40:]))
        t0 = time.monotonic()
        rc = proc.wait(timeout=30)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    tail = proc.stdout.read()
    assert rc != 0, tail
    assert ("KeyboardInterrupt" if how == "ctrl_c" else "the user's script failed") in tail
    assert took < 15.0, f"exit took {took:.1f} s"
    assert pids and not wait_gone(pids, 2.0)
