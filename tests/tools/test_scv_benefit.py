"""tools/profiling/scv_benefit.py: a tiny CPU run (CPU activities only) and the trace
summary on a hand-made CUDA-like Chrome trace."""
import json
import random

import pytest
import torch

from tools.profiling import scv_benefit


def test_cpu_smoke(tmp_path):
    out = tmp_path / "scv"
    rc = scv_benefit.main(["--modes", "off,vectorized,graph", "--batch-sizes", "1,8",
                           "--draft-tokens", "4", "--iters", "5", "--profile-iters", "3",
                           "--warmup", "2", "--vocab-size", "500", "--device", "cpu",
                           "--output-dir", str(out), "--no-progress"])
    assert rc == 0
    with open(out / "scv_benefit_summary.json") as f:
        doc = json.load(f)
    cfg = doc["config"]
    for key in ("date", "git", "device", "command"):
        assert key in cfg
    assert cfg["profiled_activities"] == "CPU"
    rows = doc["per_shape"]
    assert {(r["mode"], r["batch"], r["k"]) for r in rows} == {
        (m, b, 4) for m in ("off", "vectorized", "graph") for b in (1, 8)}
    for r in rows:
        assert r["host_us_per_call"] > 0 and r["e2e_us_per_call"] >= r["host_us_per_call"]
        assert r["profiled_calls"] == 3 and r["scv_host_us"] > 0
        assert r["kernel_launches"] == 0 and r["graph_launches"] == 0    # CPU: no CUDA calls
        # graph needs CUDA: on the CPU it runs (and says it runs) as vectorized
        assert r["ran_as"] == ("off" if r["mode"] == "off" else "vectorized")
    for mode, path in doc["traces"].items():
        with open(path) as f:
            trace = json.load(f)                      # a Chrome trace: Perfetto opens it
        names = {e.get("name") for e in trace["traceEvents"]}
        assert "scv_shape/b8_k4" in names and scv_benefit.CALL_NAME in names


def _ev(name, cat, ts, dur, corr=None, pid=1, tid=1):
    e = {"ph": "X", "name": name, "cat": cat, "ts": ts, "dur": dur, "pid": pid, "tid": tid}
    if corr is not None:
        e["args"] = {"correlation": corr}
    return e


def test_summarize_trace_counts():
    evs = [
        _ev("scv_shape/b8_k4", "user_annotation", 0, 100),
        _ev("scv_compute_mask", "user_annotation", 1, 40),
        _ev("scv_compute_mask", "user_annotation", 50, 40),
        _ev("cudaMemcpyAsync", "cuda_runtime", 2, 3, corr=1),
        _ev("cudaGraphLaunch", "cuda_runtime", 6, 4, corr=2),
        _ev("cuLaunchKernel", "cuda_driver", 51, 5, corr=3),
        _ev("cudaLaunchKernel", "cuda_runtime", 57, 5, corr=4),
        _ev("cudaMemcpyAsync", "cuda_runtime", 63, 2, corr=5),
        _ev("cudaStreamSynchronize", "cuda_runtime", 66, 10, corr=6),
        _ev("aten::copy_", "cpu_op", 62, 5),
        # GPU side (device pid), matched by correlation id
        _ev("Memcpy HtoD (Pageable -> Device)", "gpu_memcpy", 10, 1, corr=1, pid=0),
        _ev("_scv_compute_mask_kernel", "kernel", 12, 2, corr=2, pid=0),
        _ev("_scv_compute_mask_kernel", "kernel", 60, 3, corr=3, pid=0),
        _ev("elementwise_kernel", "kernel", 64, 1, corr=4, pid=0),
        _ev("Memcpy DtoH (Device -> Pageable)", "gpu_memcpy", 70, 1, corr=5, pid=0),
        # a kernel whose launch was not recorded: attributed by time
        _ev("orphan_kernel", "kernel", 95, 2, corr=50, pid=0),
        # launched outside the range: not counted
        _ev("cudaLaunchKernel", "cuda_runtime", 200, 5, corr=7),
        _ev("unrelated_kernel", "kernel", 30, 50, corr=7, pid=0),
    ]
    s = scv_benefit.summarize_trace({"traceEvents": evs}, calls_per_shape=2)["scv_shape/b8_k4"]
    assert s["profiled_calls"] == 2
    assert s["kernel_launches"] == 1.0          # (cuLaunchKernel + cudaLaunchKernel) / 2
    assert s["graph_launches"] == 0.5
    assert s["syncs"] == 0.5
    assert s["memcpy_dtoh"] == 0.5
    assert s["cuda_api_calls"] == 3.0
    assert s["cuda_api_us"] == pytest.approx((3 + 4 + 5 + 5 + 2 + 10) / 2)
    assert s["gpu_kernels"] == 2.0 and s["gpu_kernel_us"] == pytest.approx(4.0)
    assert s["scv_host_us"] == 40 and s["cpu_ops"] == 0.5


def test_inputs_look_like_verify_steps():
    from vllm.v1.spec_decode.scv import ScvVerifier
    rng = random.Random(0)
    draft, cu, sampled, nd = scv_benefit.make_inputs(64, 10, 100, 0.7, rng, "cpu")
    assert draft.numel() == sum(nd) == int(cu[-1]) and sampled.shape == (64, 11)
    assert all(1 <= k <= 10 for k in nd) and len(set(nd)) > 1          # ragged
    a = ScvVerifier("off", "cpu", 64, 10).compute(draft, cu, sampled, num_draft_tokens=nd,
                                                  max_spec_len=10)
    b = ScvVerifier("vectorized", "cpu", 64, 10).compute(draft, cu, sampled,
                                                         num_draft_tokens=nd, max_spec_len=10)
    assert torch.equal(a.num_accepted, b.num_accepted)
    assert 0 < int(a.num_accepted.sum()) < sum(nd)                     # some, not all accepted
    assert torch.equal(a.valid_lengths, a.num_accepted + 1)            # a token after each prefix
