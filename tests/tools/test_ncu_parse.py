"""tools/profiling/ncu_parse.py and ncu.py on stored ncu CSV samples (synthetic ones, and the
real H100 one once it is added: every tests/tools/data/ncu_sample_*.csv is checked)."""
import glob
import json
import os

import pytest

from tools.profiling import ncu, ncu_parse, ncu_stats

DATA = os.path.join(os.path.dirname(__file__), "data")
SAMPLES = sorted(glob.glob(os.path.join(DATA, "ncu_sample_*.csv")))


def test_samples_exist():
    assert any("synthetic" in s for s in SAMPLES)


@pytest.mark.parametrize("path", SAMPLES, ids=os.path.basename)
def test_sample_parses(path):
    table = ncu_parse.parse_file(path)
    assert table.results, "no results parsed"
    assert table.metric_names and all("__" in m for m in table.metric_names)
    for r in table.results:
        assert r.name and r.id
        for m, v in r.metrics.items():
            assert v is None or v >= 0, (r.id, m, v)
    # bytes and times come out in base units whatever ncu printed
    for m, u in table.units.items():
        if "bytes" in m:
            assert u == "byte", (m, u)
        if m == "gpu__time_duration.sum":
            assert u == "nsecond"
    s = ncu_parse.summarize(table)
    assert s["count"] == len(table.results)
    assert sum(v["count"] for v in s["by_name"].values()) == s["count"]
    for m in table.metric_names:       # additive metrics: per-name sums add up to the total
        if ncu_parse.is_average_metric(m) or s["totals"][m] is None:
            continue
        parts = sum(v[m] or 0 for v in s["by_name"].values())
        assert parts == pytest.approx(s["totals"][m])


@pytest.mark.parametrize("path", [s for s in SAMPLES
                                  if os.path.exists(s[:-4] + ".expected.json")],
                         ids=os.path.basename)
def test_sample_expected_values(path):
    with open(path[:-4] + ".expected.json") as f:
        exp = json.load(f)
    table = ncu_parse.parse_file(path)
    s = ncu_parse.summarize(table)
    assert s["count"] == exp["count"]
    for m, u in exp.get("units", {}).items():
        assert table.units[m] == u
    for m, v in exp["totals"].items():
        assert s["totals"][m] == pytest.approx(v, rel=1e-9), m
    for name, want in exp["by_name"].items():
        got = s["by_name"][name]
        for m, v in want.items():
            assert got[m] == pytest.approx(v, rel=1e-9), (name, m)


def test_units_and_numbers():
    assert ncu_parse.unit_scale("Mbyte") == (1e6, "byte")
    assert ncu_parse.unit_scale("Kbyte") == (1e3, "byte")
    assert ncu_parse.unit_scale("byte") == (1.0, "byte")
    assert ncu_parse.unit_scale("Gbyte/second") == (1e9, "byte/second")
    assert ncu_parse.unit_scale("usecond") == (1e3, "nsecond")
    assert ncu_parse.unit_scale("msecond") == (1e6, "nsecond")
    assert ncu_parse.unit_scale("sector") == (1.0, "sector")
    assert ncu_parse.unit_scale("%") == (1.0, "%")
    assert ncu_parse.parse_number("1,234,567.5") == 1234567.5
    assert ncu_parse.parse_number("n/a") is None
    assert ncu_parse.parse_number("") is None
    assert ncu_parse.parse_number("1e3") == 1000.0
    with pytest.raises(ncu_parse.NcuParseError):
        ncu_parse.parse_number("abc")


def test_header_without_units_row_and_noise():
    text = ("some app output\n==PROF== Disconnected\n"
            '"ID","Process ID","Process Name","Host Name","Kernel Name","dram__bytes_write.sum"\n'
            '"0","1","py","h","void foo<int>(int*)","1,000"\n'
            '"1","1","py","h","void foo<int>(int*)","24"\n')
    t = ncu_parse.parse_csv(text)
    assert [r.metrics["dram__bytes_write.sum"] for r in t.results] == [1000.0, 24.0]
    assert ncu_parse.short_kernel_name(t.results[0].name) == "foo"
    with pytest.raises(ncu_parse.NcuParseError, match="header"):
        ncu_parse.parse_csv("nothing here\n")


def _csv(path):
    with open(path) as f:
        return f.read()


def test_metrics_from_csv_layout():
    steps = _csv(os.path.join(DATA, "ncu_sample_synthetic_steps.csv"))
    kernels = _csv(os.path.join(DATA, "ncu_sample_synthetic.csv"))
    m = ncu.metrics_from_csv(steps, kernels)
    # the seed's access pattern: ncu_metrics['dram__bytes_write.sum'] = whole-step total
    assert m["dram__bytes_write.sum"] == pytest.approx(118.25e6)
    assert m["totals_from"] == "steps"
    kv = m["kernels"]["kv_write_kernels"]
    assert kv["write_kv"]["count"] == 2
    assert kv["write_kv"]["l2_write_bytes"] == 122944 * 32
    assert kv["commit_staged"]["l2_write_sectors"] == 7680
    only_k = ncu.metrics_from_csv(None, kernels)
    assert only_k["totals_from"] == "kernels" and only_k["dram__bytes_write.sum"] == 7168


def test_ncu_commands():
    app = ["python", "x.py"]
    c = ncu.steps_cmd("ncu", "/tmp/r", app)
    assert c[-2:] == app
    s = " ".join(c)
    for part in ("--target-processes all", "--replay-mode app-range", "--nvtx",
                 "--nvtx-include step/",
                 "dram__bytes_write.sum,dram__bytes_read.sum"):
        assert part in s
    # ncu 2025.3 rejects --profile-from-start off with range replay (seen on the H100)
    assert "--profile-from-start" not in s
    k = " ".join(ncu.kernels_cmd("ncu", "/tmp/r", app, launch_count=50))
    assert "--kernel-name regex:_rope_kv_write|_write_kv|_commit_staged|paged_attention" in k
    assert "--launch-count 50" in k and "--replay-mode kernel" in k


def test_clear_errors():
    with pytest.raises(ncu.NcuError, match="not found"):
        ncu.find_ncu("/nonexistent/ncu")
    with pytest.raises(ncu.NcuError, match="permission"):
        ncu.check_output_for_errors("==ERROR== ERR_NVGPUCTRPERM - The user does not have "
                                    "permission to access NVIDIA GPU Performance Counters")
    ncu.check_output_for_errors("==PROF== Disconnected from process 1")


def test_microbench_ncu_flag_fails_fast(tmp_path, capsys):
    from tools.profiling import run_nwor_microbench as mb
    rc = mb.main(["--ncu", "--ncu-path", "/nonexistent/ncu", "--output",
                  str(tmp_path / "x.json"), "--no-progress"])
    assert rc == 2
    assert "ncu not found" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def _entry(nwor, model, steps_csv, kernels_csv):
    return {"nwor_mode": nwor, "scv_mode": "graph", "kv_bytes_written_model": model,
            "ncu_metrics": ncu.metrics_from_csv(steps_csv, kernels_csv)}


def test_stats_text():
    from tools.profiling import byte_model
    geo = {"num_layers": 30, "num_kv_heads": 3, "head_dim": 64, "dtype": "bfloat16"}
    c = {"prompt_tokens": 100, "prefix_cache_hit_tokens": 0, "generation_tokens": 80,
         "finished_requests": 2, "spec_num_drafts": 20, "spec_num_draft_tokens": 80,
         "spec_num_accepted_tokens": 50, "nwor_tokens_staged": 0, "nwor_tokens_committed": 0}
    off = byte_model.kv_bytes_written_model(c, geo)
    stage = byte_model.kv_bytes_written_model(
        dict(c, nwor_tokens_staged=80, nwor_tokens_committed=50), geo)
    steps = _csv(os.path.join(DATA, "ncu_sample_synthetic_steps.csv"))
    kernels = _csv(os.path.join(DATA, "ncu_sample_synthetic.csv"))
    text = ncu_stats.compare(_entry("off", off, steps, kernels),
                             _entry("stage", stage, steps, kernels))
    for part in ("dram__bytes_write.sum", "dram__bytes_read.sum", "lts__t_sectors_op_write.sum",
                 "delta", "model", "write_kv", "commit_staged", "staging stays in L2"):
        assert part in text
    pk = ncu_stats.predicted_kernel_bytes(stage, "stage")
    bpt = stage["bytes_per_token"]
    # stage: write_kv writes cache tokens other than commits, plus all staged drafts
    assert pk["write_kv"] + pk["commit_staged"] == stage["total_bytes"]
    assert pk["commit_staged"] == 50 * bpt
    assert ncu_stats.predicted_kernel_bytes(off, "off")["write_kv"] == off["cache_bytes"]


FAKE_NCU = r'''#!{python}
"""A stand-in for ncu: runs the application, writes an empty report; --import prints a stored
sample CSV (steps or kernels by the report's name)."""
import os, subprocess, sys
args = sys.argv[1:]
if args[:1] == ["--version"]:
    print("NVIDIA (R) Nsight Compute Command Line Profiler\nVersion 2025.0.0.0 (fake)")
    sys.exit(0)
if "--import" in args:
    rep = args[args.index("--import") + 1]
    name = "ncu_sample_synthetic_steps.csv" if "_steps" in rep else "ncu_sample_synthetic.csv"
    print(open(os.path.join({data!r}, name)).read())
    sys.exit(0)
with open({log!r}, "a") as f:
    f.write(" ".join(args) + "\n")
i = 0
while i < len(args):
    if args[i] in ("--nvtx", "--force-overwrite"):
        i += 1
    elif args[i].startswith("-"):
        i += 2
    else:
        break
report = args[args.index("--export") + 1]
rc = subprocess.call(args[i:])
open(report + ".ncu-rep", "w").close()
sys.exit(rc)
'''


def test_microbench_ncu_flow_with_fake_ncu(tmp_path, monkeypatch):
    """--ncu end to end with a fake ncu: child command lines, CSV export, parsing, and the
    profiled child's counters attached to the mode."""
    import sys
    from models_util import tiny_model
    from tools.profiling import run_nwor_microbench as mb
    fake = tmp_path / "ncu"
    log = tmp_path / "calls.log"
    fake.write_text(FAKE_NCU.format(python=sys.executable, data=DATA, log=str(log)))
    fake.chmod(0o755)
    monkeypatch.setattr(mb, "ncu_preflight",
                        lambda args, models: (str(fake), "fake", ["steps", "kernels"]))
    out = tmp_path / "mb.json"
    rc = mb.main(["--target-model", tiny_model("llama"), "--scenario", "synthetic",
                  "--requests", "2", "--batches", "1", "--warmup", "0", "--draft-tokens", "3",
                  "--max-tokens", "8", "--nwor-modes", "stage", "--scv-modes", "vectorized",
                  "--cpu-threads", "1", "--ncu", "--output", str(out), "--no-progress"])
    assert rc == 0
    calls = log.read_text().splitlines()
    assert len(calls) == 2
    assert "--replay-mode app-range" in calls[0] and "--nvtx-include step/" in calls[0]
    assert "--replay-mode kernel" in calls[1] and "--ncu-child" in calls[1]
    assert "--nwor-modes stage --scv-modes vectorized" in calls[1]
    with open(out) as f:
        doc = json.load(f)
    e = doc["summary"]["per_mode"][0]
    m = e["ncu_metrics"]
    assert m["dram__bytes_write.sum"] == pytest.approx(118.25e6)
    assert m["kernels"]["kv_write_kernels"]["commit_staged"]["l2_write_sectors"] == 7680
    assert m["profiled"].startswith("kernels pass: measured batches only")
    # the fake's 3 step ranges vs the engine's own step count: `totals_cover` says which
    steps = e["engine_steps"]
    assert steps["warmup"] == 0 and steps["measured"] > 0
    if steps["measured"] == 3:
        assert m["totals_cover"].startswith("measured batches only")
    else:
        assert m["totals_cover"].startswith("ALL 3 profiled step ranges")
        assert f"{steps['measured']} measured" in m["totals_cover"]
    run = m["profiled_run"]
    assert run["spec_num_draft_tokens"] == e["spec_num_draft_tokens"]   # same workload
    assert run["kv_bytes_written_model"]["cache_bytes"] == e["kv_bytes_written_model"][
        "cache_bytes"]
    assert os.path.exists(m["steps_csv"]) and os.path.exists(m["kernels_csv"])


def test_steps_totals_cover_the_measured_batches_only():
    """Range replay profiles the warm-up steps too: the first `warmup` ranges are dropped
    when the engine's counts match the profiled ranges, and `covers` says so either way."""
    steps = _csv(os.path.join(DATA, "ncu_sample_synthetic_steps.csv"))
    table = ncu_parse.parse_csv(steps)
    by_id = {r.id: r.metrics["dram__bytes_write.sum"] for r in table.results}
    m = ncu.metrics_from_csv(steps, None, steps_drop_first=1, steps_expect=2)
    assert m["steps"]["count"] == 2 and m["steps"]["dropped_ranges"] == 1
    assert m["dram__bytes_write.sum"] == pytest.approx(by_id["1"] + by_id["2"])
    assert m["totals_cover"].startswith("measured batches only")
    bad = ncu.metrics_from_csv(steps, None, steps_drop_first=1, steps_expect=5)
    assert bad["steps"]["count"] == 3 and bad["steps"]["dropped_ranges"] == 0
    assert bad["totals_cover"].startswith("ALL 3 profiled step ranges")
    plain = ncu.metrics_from_csv(steps, None)
    assert plain["dram__bytes_write.sum"] == pytest.approx(sum(by_id.values()))


# --- the KV-write kernels by name (fused and unfused), and partial ncu runs -----------------
KV_KERNELS = {"_rope_kv_write_kernel": "vllm/v1/attention/rope_kv_write.py",
              "_write_kv_kernel": "vllm/v1/attention/kv_write.py",
              "_commit_staged_kv_kernel": "vllm/v1/spec_decode/nwor_commit.py"}
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _script_regexes():
    """The kernel regexes the scripts pass: the quick ncu test's and the microbench default."""
    import re
    from tools.profiling import run_nwor_microbench as mb
    with open(os.path.join(ROOT, "tools/profiling/run_ncu_bandwidth_test.sh")) as f:
        quick = re.search(r"--ncu-kernel-regex '([^']+)'", f.read()).group(1)
    default = mb.build_parser().get_default("ncu_kernel_regex")
    return quick, default


def test_kv_kernel_names_exist_in_vllm():
    # a rename of a Triton kernel must show up here, not as an empty ncu pass on the device
    for name, path in KV_KERNELS.items():
        with open(os.path.join(ROOT, path)) as f:
            assert f"def {name}(" in f.read(), (name, path)


def test_kernel_regexes_match_the_fused_and_unfused_kv_write():
    import re
    quick, default = _script_regexes()
    assert quick == ncu.KV_KERNEL_REGEX and default == ncu.DEFAULT_KERNEL_REGEX
    for rx in (ncu.KV_KERNEL_REGEX, ncu.DEFAULT_KERNEL_REGEX, quick, default):
        for name in KV_KERNELS:                 # ncu's regex: matches anywhere in the name
            assert re.search(rx, name), (rx, name)
        for other in ("_rotary_kernel", "_rms_norm_kernel", "_scv_compute_mask_kernel"):
            assert not re.search(rx, other), (rx, other)
    assert "paged_attention" in ncu.DEFAULT_KERNEL_REGEX


@pytest.mark.parametrize("write_kernel", ["_rope_kv_write_kernel", "_write_kv_kernel"])
def test_kv_write_counted_whatever_the_fusion(write_kernel):
    kernels = _csv(os.path.join(DATA, "ncu_sample_synthetic.csv")).replace(
        "_write_kv_kernel", write_kernel)
    kv = ncu.metrics_from_csv(None, kernels)["kernels"]["kv_write_kernels"]
    assert kv["write_kv"]["count"] == 2 and kv["write_kv"]["kernels"] == [write_kernel]
    assert kv["write_kv"]["l2_write_bytes"] == 122944 * 32
    assert kv["commit_staged"]["kernels"] == ["_commit_staged_kv_kernel"]


def test_unprofiled_reason_lists_the_launched_kernels():
    log = ("==PROF== Disconnected from process 7517\n==WARNING== No kernels were profiled.\n"
           "Available Kernels:\n1. _paged_attention_kernel\n2. _rope_kv_write_kernel\n")
    why = ncu.unprofiled_reason(log)
    assert "no kernels were profiled" in why and "_rope_kv_write_kernel" in why
    assert ncu.unprofiled_reason("==PROF== Disconnected from process 1") == ""


def _h200_models():
    from tools.profiling import byte_model
    geo = {"num_layers": 30, "num_kv_heads": 3, "head_dim": 64, "dtype": "bfloat16"}
    c = {"prompt_tokens": 100, "prefix_cache_hit_tokens": 0, "generation_tokens": 64,
         "finished_requests": 8, "spec_num_drafts": 22, "spec_num_draft_tokens": 87,
         "spec_num_accepted_tokens": 27, "nwor_tokens_staged": 0, "nwor_tokens_committed": 0}
    return (byte_model.kv_bytes_written_model(c, geo), byte_model.kv_bytes_written_model(
        dict(c, nwor_tokens_staged=87, nwor_tokens_committed=27), geo))


def test_stats_keep_step_totals_when_a_kernels_pass_failed():
    """The H200 quick run (2026-11-29): both steps passes succeeded, the baseline's kernels pass
    matched nothing, and the nwor one matched only the commit. The whole-step totals must still
    be reported, with exactly what is missing."""
    off_model, stage_model = _h200_models()
    err = "ncu wrote no report 'x_kernels.ncu-rep': nothing was profiled"
    base = {"nwor_mode": "off", "scv_mode": "vectorized", "kv_bytes_written_model": off_model,
            "ncu_metrics": dict(ncu.metrics_from_csv(
                _csv(os.path.join(DATA, "ncu_sample_h200_steps_off.csv")), None),
                pass_errors={"kernels": err}, kernel_regex="_write_kv|_commit_staged")}
    commit_only = "\n".join(ln for ln in _csv(os.path.join(DATA, "ncu_sample_synthetic.csv"))
                            .splitlines() if "_write_kv_kernel" not in ln)
    nwor = {"nwor_mode": "stage", "scv_mode": "vectorized",
            "kv_bytes_written_model": stage_model,
            "ncu_metrics": dict(ncu.metrics_from_csv(
                _csv(os.path.join(DATA, "ncu_sample_h200_steps_stage.csv")), commit_only),
                kernel_regex="_write_kv|_commit_staged")}
    text = ncu_stats.compare(base, nwor)
    assert "Whole decode steps (NVTX ranges, app-range replay): 6 ranges vs 6" in text
    assert "142.242" in text and "147.185" in text and "+4.943 MB" in text
    assert f"baseline: kernels pass failed: {err}" in text
    assert "baseline: NOT MEASURED, the kernels pass failed" in text
    assert "nwor: write_kv NOT MEASURED: the kernels pass matched no KV-write kernel" in text
    assert "not measured (steps pass" not in text
    # one side's steps pass missing too: the other side's totals still print
    no_steps = dict(base, ncu_metrics={"pass_errors": {"steps": "timed out"},
                                       "passes": ["steps", "kernels"]})
    text = ncu_stats.compare(no_steps, nwor)
    assert "- ranges vs 6" in text and "147.185" in text
    assert "baseline: NOT MEASURED, the steps pass failed (error above)" in text
    assert "baseline: steps pass failed: timed out" in text


def test_stats_rebuilt_from_a_runs_csvs(tmp_path):
    """ncu_stats --from-csv on a run's folders: the baseline JSON kept only the kernels pass's
    error, its steps CSV is still on disk."""
    off_model, stage_model = _h200_models()
    shutil = __import__("shutil")
    for mode, model, label in (("off", off_model, "baseline"), ("stage", stage_model, "nwor")):
        d = tmp_path / f"small_{label}_ncu"
        d.mkdir()
        shutil.copy(os.path.join(DATA, f"ncu_sample_h200_steps_{mode}.csv"),
                    d / f"{mode}_vectorized_steps.csv")
        (d / f"{mode}_vectorized_kernels.log").write_text(
            "$ ncu --kernel-name regex:_write_kv|_commit_staged --replay-mode kernel app\n"
            "==WARNING== No kernels were profiled.\nAvailable Kernels:\n"
            "1. _paged_attention_kernel\n2. _rope_kv_write_kernel\n")
        entry = {"nwor_mode": mode, "scv_mode": "vectorized", "kv_bytes_written_model": model,
                 "ncu_metrics": {"error": "ncu wrote no report"}}
        child = dict(entry, engine_steps={"warmup": 0, "measured": 6})
        (d / f"{mode}_vectorized_child.json").write_text(
            json.dumps({"summary": {"per_mode": [child]}}))
        (tmp_path / f"small_{label}.json").write_text(
            json.dumps({"config": {}, "summary": {"per_mode": [entry]}}))
    m = ncu.metrics_from_dir(str(tmp_path / "small_baseline_ncu"), "off_vectorized",
                             prior={"error": "ncu wrote no report"})
    assert m["dram__bytes_write.sum"] == 142242048
    assert m["steps"]["covers"].startswith("measured batches only: 6 step ranges")
    assert "_rope_kv_write_kernel" in m["pass_errors"]["kernels"]
    assert "the run recorded: ncu wrote no report" in m["pass_errors"]["kernels"]
    assert m["kernel_regex"] == "_write_kv|_commit_staged" and "error" not in m
    out = tmp_path / "stats.txt"
    assert ncu_stats.main([str(tmp_path / "small_baseline.json"),
                           str(tmp_path / "small_nwor.json"), "--from-csv",
                           "--output", str(out)]) == 0
    text = out.read_text()
    assert "6 ranges vs 6" in text and "+4.943 MB" in text
    assert "KV-write kernels: not measured" in text
