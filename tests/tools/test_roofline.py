"""tools/roofline (seed 003): the ncu parser against independently summed samples, the plot's
files (300 dpi PNG, one-page PDF), every script's --help, and the three stages on the CPU."""
import glob
import json
import os
import re
import struct
import subprocess
import sys

import pytest

from tools.roofline import make_test_sample, ncu_metrics, parse_ncu_results, profile_decode_step

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RF = os.path.join(ROOT, "tools", "roofline")
DATA = os.path.join(os.path.dirname(__file__), "data")
SAMPLES = sorted(p for p in glob.glob(os.path.join(DATA, "ncu_sample_*roofline*.csv"))
                 if os.path.exists(p[:-4] + ".roofline.json"))
METRIC_DIRS = sorted(d for d in glob.glob(os.path.join(DATA, "roofline_metrics_*"))
                     if os.path.isdir(d))


def test_samples_exist():
    assert any("synthetic" in s for s in SAMPLES)
    assert METRIC_DIRS


@pytest.mark.parametrize("path", SAMPLES, ids=os.path.basename)
def test_parse_matches_independent_sums(path, tmp_path):
    with open(path[:-4] + ".roofline.json") as f:
        exp = json.load(f)
    out = tmp_path / "m.json"
    assert parse_ncu_results.main(["--input", path, "--stage", "v1_decode",
                                   "--output", str(out)]) == 0
    got = json.loads(out.read_text())
    for k in ("flops", "flops_tensor", "flops_fp32", "flops_fp16", "flops_fp64", "bytes",
              "dram_bytes_read", "dram_bytes_write", "time_s"):
        assert got[k] == pytest.approx(exp[k], rel=1e-9, abs=1e-12), k
    assert got["kernels"] == exp["kernels"]
    assert got["tensor_family"] == exp["tensor_family"]
    assert got["arithmetic_intensity"] == pytest.approx(exp["flops"] / exp["bytes"])
    assert got["flops_per_s"] == pytest.approx(exp["flops"] / exp["time_s"])
    # the sidecar itself agrees with a re-sum of the file (csv module, not the parser)
    with open(path) as f:
        again = make_test_sample.independent_sums(f.read())
    for k in ("flops", "bytes", "time_s"):
        assert again[k] == pytest.approx(exp[k], rel=1e-12)


def test_synthetic_sample_by_hand(tmp_path):
    """The synthetic sample's totals, worked out by hand from its five rows: tensor
    2 x 402,653,184 + 33,554,432 + 16,777,216; fp32 = fadd + fmul + 2 ffma over rows; fp16
    1,024 + 512 + 2 x 256 (the other row's hfma is n/a); fp64 2 x 12."""
    out = tmp_path / "m.json"
    parse_ncu_results.main(["--input", os.path.join(DATA, "ncu_sample_synthetic_roofline.csv"),
                            "--stage", "v0_prefill", "--output", str(out)])
    got = json.loads(out.read_text())
    assert got["flops_tensor"] == 855_638_016
    assert got["flops_fp32"] == 1_708_032
    assert got["flops_fp16"] == 2_048
    assert got["flops_fp64"] == 24
    assert got["flops"] == 857_348_120
    assert got["bytes"] == 15_851_520 + 81_920
    assert got["time_s"] == pytest.approx(26_112e-9)
    assert got["flops_tensor_src_family"] == got["flops_tensor"]   # the cross-check agrees
    assert got["top_kernels"][0]["name"].startswith("nvjet_hsh") and \
        got["top_kernels"][0]["count"] == 2


def test_parse_adds_model_counts(tmp_path):
    prof = tmp_path / "stages.json"
    assert profile_decode_step.main(["--model", "tiny-llama", "--P", "9", "--batch", "2",
                                     "--dtype", "float32", "--warmup", "0", "--iters", "1",
                                     "--stage", "v1_decode", "--device", "cpu",
                                     "--output", str(prof)]) == 0
    out = tmp_path / "m.json"
    parse_ncu_results.main(["--input", os.path.join(DATA, "ncu_sample_synthetic_roofline.csv"),
                            "--stage", "v1_decode", "--profile-json", str(prof),
                            "--output", str(out)])
    got = json.loads(out.read_text())
    st = json.loads(prof.read_text())["stages"]["v1_decode"]
    assert got["model"]["flops_model"] == st["flops_model"]
    assert got["model"]["measured_over_model_flops"] == pytest.approx(
        got["flops"] / st["flops_model"])
    with pytest.raises(SystemExit):      # a stage the profile did not run
        parse_ncu_results.main(["--input", os.path.join(DATA,
                                                        "ncu_sample_synthetic_roofline.csv"),
                                "--stage", "v0_prefill", "--profile-json", str(prof),
                                "--output", str(out)])


def test_metric_selection():
    query = "\n".join(["Metric Name  Metric Type  Unit  Description",
                       "dram__bytes_read Counter byte x",
                       "sm__ops_path_tensor_src_fp16 Counter  x",
                       "sm__ops_path_tensor_src_fp16_dst_fp32 Counter  x",
                       "sm__ops_path_tensor_op_hgmma_src_fp16_sparsity_off Counter  x"])
    sel = ncu_metrics.select(ncu_metrics.parse_query(query))
    assert sel["tensor_family"] == "op"
    assert sel["tensor"] == ["sm__ops_path_tensor_op_hgmma_src_fp16_sparsity_off.sum"]
    # the per-type sums ride along as a cross-check, src_fp16 without its dst_* parts
    assert "sm__ops_path_tensor_src_fp16.sum" in sel["metrics"]
    assert "sm__ops_path_tensor_src_fp16_dst_fp32.sum" not in sel["metrics"]
    for m in ncu_metrics.BASE:
        assert m in sel["metrics"]
    sel = ncu_metrics.select(ncu_metrics.parse_query(query.replace("op_hgmma", "xx")))
    assert sel["tensor_family"] == "src"
    assert ncu_metrics.select(None)["tensor_family"] == "op"
    # FLOPs never add both families
    tot = {"sm__ops_path_tensor_op_hgmma_src_fp16_sparsity_off.sum": 100.0,
           "sm__ops_path_tensor_src_fp16.sum": 100.0,
           "sm__sass_thread_inst_executed_op_ffma_pred_on.sum": 5.0}
    fl = ncu_metrics.flops_from_totals(tot)
    assert fl["flops"] == 110.0 and fl["flops_tensor_src_family"] == 100.0


def _png_dpi(path):
    b = open(path, "rb").read()
    assert b[:8] == b"\x89PNG\r\n\x1a\n"
    i = b.find(b"pHYs")
    assert i > 0, "no pHYs chunk: the PNG carries no DPI"
    x, y, unit = struct.unpack(">IIB", b[i + 4:i + 13])
    assert unit == 1                      # pixels per metre
    return x * 0.0254, y * 0.0254


@pytest.mark.parametrize("mdir", METRIC_DIRS, ids=os.path.basename)
def test_plot_png_pdf(mdir, tmp_path):
    pytest.importorskip("matplotlib")
    from tools.roofline import plot_roofline
    out = tmp_path / "roofline"
    args = [a for s in ("v0_prefill", "v1_prefill", "v1_decode")
            if os.path.exists(os.path.join(mdir, f"{s}_metrics.json"))
            for a in (f"--{s}", os.path.join(mdir, f"{s}_metrics.json"))]
    assert plot_roofline.main(args + ["--gpu", "H200", "--dtype", "float16", "--model",
                                      "gpt2-medium", "--batch-size", "1", "--seq-length", "512",
                                      "--formats", "png", "pdf", "--output", str(out)]) == 0
    dx, dy = _png_dpi(f"{out}.png")
    assert dx == pytest.approx(300, abs=0.5) and dy == pytest.approx(300, abs=0.5)
    pdf = open(f"{out}.pdf", "rb").read()
    assert pdf.startswith(b"%PDF")
    assert len(re.findall(rb"/Type\s*/Page(?![s\w])", pdf)) == 1
    assert re.search(rb"/Count\s+1\b", pdf)
    summ = json.loads(open(f"{out}_summary.json").read())
    for p in summ["points"].values():
        assert 0 < p["efficiency_pct"] <= 100.0 + 1e-9
        assert p["bottleneck"] in ("memory-bound", "compute-bound")
        want = "memory-bound" if p["arithmetic_intensity"] < p["ridge_point"] else "compute-bound"
        assert p["bottleneck"] == want


def test_plot_measured_roof_and_errors(tmp_path):
    pytest.importorskip("matplotlib")
    from tools.roofline import plot_roofline
    m = os.path.join(METRIC_DIRS[0], "v1_decode_metrics.json")
    peaks = tmp_path / "peaks.json"
    peaks.write_text(json.dumps({"device": "NVIDIA H200", "date": "2026-11-29",
                                 "bandwidth_bytes_per_s": 4.3e12,
                                 "flops_per_s": {"float16": 7.9e14}}))
    out = tmp_path / "r"
    assert plot_roofline.main(["--v1_decode", m, "--peaks-json", str(peaks), "--formats", "svg",
                               "--output", str(out)]) == 0
    summ = json.loads(open(f"{out}_summary.json").read())
    p = summ["points"]["v1_decode"]
    assert summ["efficiency_against"] == "measured"
    assert p["attainable_flops_per_s"] == pytest.approx(
        min(7.9e14, p["arithmetic_intensity"] * 4.3e12))
    with pytest.raises(SystemExit):                       # no stage given
        plot_roofline.main(["--output", str(out)])
    with pytest.raises(SystemExit):                       # dtype missing from the peaks
        plot_roofline.main(["--v1_decode", m, "--peaks-json", str(peaks), "--dtype", "bfloat16",
                            "--output", str(out)])


SEED_FLAGS = {
    "profile_decode_step.py": ["--P", "--batch", "--model", "--dtype", "--stage", "--output"],
    "run_ncu.sh": ["--P", "--batch", "--model", "--dtype", "--out-dir", "--ncu"],
    "parse_ncu_results.py": ["--input", "--stage", "--output", "--profile-json"],
    "plot_roofline.py": ["--v0_prefill", "--v1_prefill", "--v1_decode", "--gpu", "--dtype",
                         "--model", "--batch-size", "--seq-length", "--formats"],
    "analyze_results.sh": ["--P", "--batch", "--model", "--dtype", "--gpu"],
    "measure_peaks.py": ["--copy-mib", "--n", "--output"],
}


@pytest.mark.parametrize("script", sorted(SEED_FLAGS))
def test_help_lists_seed_flags(script, tmp_path):
    path = os.path.join(RF, script)
    cmd = (["bash", path, "--help"] if script.endswith(".sh")
           else [sys.executable, path, "--help"])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # from another folder and without PYTHONPATH: the scripts must not need the repo on it
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    for flag in SEED_FLAGS[script]:
        assert flag in p.stdout, (script, flag)
    if script == "plot_roofline.py":
        for gpu in ("A6000", "A100-40GB", "A100-80GB", "H100-80GB", "H200"):
            assert gpu in p.stdout


def test_parse_runs_as_a_file_without_pythonpath(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = tmp_path / "m.json"
    p = subprocess.run([sys.executable, os.path.join(RF, "parse_ncu_results.py"), "--input",
                        os.path.join(DATA, "ncu_sample_synthetic_roofline.csv"), "--stage",
                        "v1_decode", "--output", str(out)],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    assert json.loads(out.read_text())["flops"] == 857_348_120


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-gpt2"])
def test_profile_stages_cpu(model, tmp_path):
    out = tmp_path / "stages.json"
    assert profile_decode_step.main(["--model", model, "--P", "21", "--batch", "3",
                                     "--dtype", "float32", "--warmup", "1", "--iters", "2",
                                     "--device", "cpu", "--output", str(out)]) == 0
    d = json.loads(out.read_text())
    st = d["stages"]
    assert set(st) == {"v0_prefill", "v1_prefill", "v1_decode"}
    # decode from the cache v1_prefill built == the last token of a cache-free forward
    assert d["config"]["decode_check_rel_err"] < 1e-4
    assert st["v0_prefill"]["tokens"] == st["v1_prefill"]["tokens"] == 63
    assert st["v1_decode"]["tokens"] == 3
    assert st["v0_prefill"]["flops_model"] == st["v1_prefill"]["flops_model"]
    assert st["v0_prefill"]["bytes_model_kv_write"] == 0
    assert st["v1_prefill"]["bytes_model_kv_write"] > 0
    assert st["v1_decode"]["bytes_model_kv_read"] == 21 * st["v1_decode"]["bytes_model_kv_write"]
    assert st["v1_decode"]["arithmetic_intensity_model"] < \
        st["v1_prefill"]["arithmetic_intensity_model"]
    for s in st.values():
        assert len(s["time_s_all"]) == 2 and s["time_s_median"] > 0
        assert s["logits_shape"] == [3, d["config"]["geometry"]["vocab"]]


def test_profile_cache_is_written_only_by_v1(tmp_path):
    import torch
    st = profile_decode_step.Stages("tiny-llama", 7, 2, torch.float32, torch.device("cpu"))
    st.run("v0_prefill")
    assert st.kv_cache.abs().sum() == 0 and st.no_cache.abs().sum() == 0
    st.run("v1_prefill")
    written = (st.kv_cache[0, 0].abs().sum(dim=(-1, -2)) > 0).sum().item()
    assert written == 2 * 7                               # every prompt token, nothing else


def test_profile_rejects_bad_input():
    with pytest.raises(ValueError, match="P"):
        profile_decode_step.main(["--model", "tiny-gpt2", "--P", "300", "--device", "cpu",
                                  "--dtype", "float32"])
    with pytest.raises(SystemExit):
        profile_decode_step.main(["--model", "no-such-model"])


def test_measure_peaks_cpu(tmp_path):
    from tools.roofline import measure_peaks
    out = tmp_path / "peaks.json"
    assert measure_peaks.main(["--copy-mib", "1", "--n", "48", "--dtypes", "float32",
                               "--warmup", "0", "--repeats", "2", "--device", "cpu",
                               "--output", str(out)]) == 0
    d = json.loads(out.read_text())
    assert d["bandwidth_bytes_per_s"] > 0 and d["flops_per_s"]["float32"] > 0
    assert d["matmul"]["float32"]["flops"] == 2 * 48 ** 3
