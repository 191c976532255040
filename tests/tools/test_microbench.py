"""run_nwor_microbench.py on the CPU with a tiny model: 2 NWOR x 2 SCV modes, n-gram k=3,
repetitive token prompts. Checks the JSON (every mode, counters, byte model) and the byte model
against the K/V writes actually made by the CPU reference kernels."""
import json
import os
import subprocess

import pytest
import torch

from models_util import tiny_model
from tools.profiling import byte_model
from tools.profiling import run_nwor_microbench as mb

REQUESTS, BATCHES, MAX_TOKENS, K = 4, 2, 16, 3
MODES = [(n, s) for n in ("off", "stage") for s in ("off", "vectorized")]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One microbench run; also counts cache / staging / commit writes (tokens x layers) made
    by the CPU reference kernels between the two metric snapshots of each mode."""
    import vllm.v1.attention.kv_write as kw
    import vllm.v1.attention.rope_kv_write as rkw
    import vllm.v1.spec_decode.nwor_commit as nc
    from vllm.entrypoints.llm import LLM
    counts = {"cache": 0, "staging": 0, "commit": 0}
    snaps = []
    write_ref, commit_ref, metrics = kw.write_kv_ref, nc.commit_staged_kv_ref, LLM.get_metrics_dict

    def write(key, value, layer, slots, staging=None, stage_index=None):
        counts["cache"] += int((slots >= 0).sum())
        if staging is not None and stage_index is not None:
            counts["staging"] += int((stage_index >= 0).sum())
        return write_ref(key, value, layer, slots, staging, stage_index)

    def commit(staging, kv_cache, slots):
        counts["commit"] += int((slots >= 0).sum()) * staging.shape[0]   # all layers at once
        return commit_ref(staging, kv_cache, slots)

    def get_metrics_dict(self):
        snaps.append(dict(counts))
        return metrics(self)

    out = tmp_path_factory.mktemp("mb") / "mb.json"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)     # a busy 2-core machine: no OpenMP stalls
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kw, "write_kv_ref", write)
        mp.setattr(rkw, "write_kv_ref", write)     # the fused rotary + KV write's reference
        mp.setattr(nc, "commit_staged_kv_ref", commit)
        mp.setattr(LLM, "get_metrics_dict", get_metrics_dict)
        rc = mb.main(["--target-model", tiny_model("llama"), "--scenario", "synthetic",
                      "--requests", str(REQUESTS), "--batches", str(BATCHES), "--warmup", "1",
                      "--draft-tokens", str(K), "--max-tokens", str(MAX_TOKENS),
                      "--nwor-modes", "off,stage", "--scv-modes", "off,vectorized",
                      "--spec-method", "ngram", "--output", str(out), "--no-progress"])
    torch.set_num_threads(threads)
    assert rc == 0
    with open(out) as f:
        doc = json.load(f)
    # snapshots come in pairs per mode: after warmup, after the measured batches
    measured = [{k: b[k] - a[k] for k in a} for a, b in zip(snaps[0::2], snaps[1::2])]
    return doc, measured


def _modes(doc):
    return {(e["nwor_mode"], e["scv_mode"]): e for e in doc["summary"]["per_mode"]}


def test_every_mode_and_config(run):
    doc, _ = run
    per = _modes(doc)
    assert sorted(per) == sorted(MODES)
    assert all("error" not in e for e in per.values())
    cfg = doc["config"]
    for key in ("date", "git", "device", "command", "target_model", "spec_method", "args"):
        assert key in cfg
    assert cfg["spec_method"] == "ngram" and cfg["device"]["type"] == "cpu"
    assert "verified" in cfg["acceptance"]
    for e in per.values():
        assert e["latency_avg_s"] > 0 and e["latency_p50_s"] > 0
        assert e["latency_p99_s"] >= e["latency_p50_s"]
        assert e["output_tokens_per_s"] > 0
        assert len(e["batch_latencies_s"]) == BATCHES      # warmup excluded
        assert e["num_requests"] == REQUESTS * BATCHES
        assert e["output_tokens"] == e["generation_tokens"] == REQUESTS * BATCHES * MAX_TOKENS
        assert e["ncu_metrics"] == {}


def test_spec_and_nwor_counters(run):
    doc, _ = run
    per = _modes(doc)
    ref = per[("off", "off")]
    assert ref["spec_num_drafts"] > 0 and ref["spec_num_draft_tokens"] > 0
    assert 0 < ref["spec_num_accepted_tokens"] < ref["spec_num_draft_tokens"]  # some rejected
    for (nwor, scv), e in per.items():
        # greedy: every mode verifies the same drafts
        for k in ("spec_num_drafts", "spec_num_draft_tokens", "spec_num_accepted_tokens",
                  "spec_accepted_per_position"):
            assert e[k] == ref[k], (nwor, scv, k)
        assert e["spec_acceptance_ratio"] == pytest.approx(
            e["spec_num_accepted_tokens"] / e["spec_num_draft_tokens"])
        assert e["spec_mean_acceptance_length"] == pytest.approx(
            1 + e["spec_num_accepted_tokens"] / e["spec_num_drafts"])
        assert sum(e["spec_accepted_per_position"]) == e["spec_num_accepted_tokens"]
        assert e["scv_mask_steps"][scv] > 0 and e["scv_mode_effective"] == scv
        if nwor == "stage":
            assert e["nwor_tokens_staged"] == e["spec_num_draft_tokens"]
            assert e["nwor_tokens_committed"] == e["spec_num_accepted_tokens"]
            assert e["nwor_windows"] > 0 and e["nwor_fallbacks"] == 0
            assert e["nwor_writes_saved_pct"] == pytest.approx(
                100 * (1 - e["spec_num_accepted_tokens"] / e["spec_num_draft_tokens"]))
        else:
            assert e["nwor_tokens_staged"] == e["nwor_tokens_committed"] == 0


def test_byte_model_consistent(run):
    doc, _ = run
    per = _modes(doc)
    bpt = 2 * 2 * 2 * 16 * 4       # layers x (K, V) x kv_heads x head_dim x fp32
    off = per[("off", "off")]["kv_bytes_written_model"]
    rejected = (per[("off", "off")]["spec_num_draft_tokens"]
                - per[("off", "off")]["spec_num_accepted_tokens"])
    for (nwor, scv), e in per.items():
        m = e["kv_bytes_written_model"]
        assert m["bytes_per_token"] == bpt
        assert m["cache_bytes_if_off"] == off["cache_bytes"]      # same workload, every mode
        assert m["total_bytes"] == m["cache_bytes"] + m["staging_bytes"]
        if nwor == "stage":
            assert m["cache_bytes"] == m["cache_bytes_if_off"] - rejected * bpt
            assert m["staging_bytes"] == e["nwor_tokens_staged"] * bpt
            assert m["cache_bytes"] == m["floor_bytes"]
        else:
            assert m["cache_bytes"] == m["cache_bytes_if_off"]
            assert m["staging_bytes"] == 0


def test_byte_model_matches_counted_writes(run):
    doc, measured = run
    assert len(measured) == len(MODES)
    assert any(c["cache"] for c in measured)      # the hook saw the engine's K/V writes
    layers = 2
    for e, c in zip(doc["summary"]["per_mode"], measured):
        t = e["kv_bytes_written_model"]["tokens"]
        assert (c["cache"] + c["commit"]) == t["cache"] * layers, (e["nwor_mode"], c, t)
        assert c["staging"] == t["staging"] * layers
        assert c["commit"] == t["committed"] * layers


def test_byte_model_unit():
    geo = {"num_layers": 32, "num_kv_heads": 8, "head_dim": 128, "dtype": "bfloat16",
           "tensor_parallel_size": 2}
    assert byte_model.kv_bytes_per_token(32, 8, 128, torch.bfloat16) == 128 * 1024  # Llama-3-8B
    c = {"prompt_tokens": 50, "prefix_cache_hit_tokens": 16, "generation_tokens": 40,
         "finished_requests": 2, "spec_num_drafts": 10, "spec_num_draft_tokens": 40,
         "spec_num_accepted_tokens": 20, "nwor_tokens_staged": 36,
         "nwor_tokens_committed": 18}          # one fallback window of 4 drafts (2 accepted)
    m = byte_model.kv_bytes_written_model(c, geo)
    t = m["tokens"]
    assert t["prefill"] == 34 and t["plain_decode"] == 40 - 2 - 10 - 20
    assert t["cache_if_off"] == 34 + 10 + 8 + 40
    assert t["cache"] == 34 + 10 + 8 + 18 + 4          # fallback drafts go straight in
    assert m["bytes_per_token_per_rank"] == m["bytes_per_token"] // 2


def test_help_and_cli_errors(tmp_path, capsys):
    assert "--nwor-modes" in mb.build_parser().format_help()
    assert mb.main(["--nwor-modes", "sometimes", "--output", str(tmp_path / "x.json")]) == 2
    assert "--nwor-modes" in capsys.readouterr().err


@pytest.mark.parametrize("script", ["run_ncu_bandwidth_test.sh", "run_scv_benefit_analysis.sh",
                                    "run_benchmark_sweep.sh"])
def test_shell_scripts_help(script):
    p = subprocess.run(["bash", os.path.join(ROOT, "tools", "profiling", script), "--help"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and "Usage" in p.stdout
