"""Seed 004's experiment scripts (tools/experiments/) and the microbench's two new flags:
--help of each script, the full grids their --dry-run prints (model / TP overrides, the
--llama part), the summary's twin ratios, markdown and plots on synthetic results, a tiny CPU
microbench run with --adaptive-draft-length 1 answering the seed's jq paths and recording the
controller's decisions, and a grid interrupted and resumed on a tiny model;
--confidence-threshold with n-gram drafting is a clear error."""
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from models_util import tiny_model
from tools.experiments import summarize
from tools.profiling import run_nwor_microbench as mb

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXP = os.path.join(ROOT, "tools", "experiments")
SCRIPTS = ("run_all_experiments.sh", "run_adaptive_grid.sh", "run_early_exit_grid.sh",
           "run_oneoff_scenarios.sh")
# the seed's jq snippets (docs/experiments.md), as paths into the microbench JSON
JQ_PATHS = ('.summary.per_mode[0].latency_avg_s',
            '.summary.per_mode[0].spec_num_draft_tokens',
            '.summary.per_mode[0].spec_acceptance_ratio',
            '.summary.per_mode[0].ncu_metrics."dram__bytes_write.sum"',
            '.summary.per_mode[0].ncu_metrics."dram__throughput.avg.pct_of_peak_sustained_elapsed"')


def jq_path(doc, path: str):
    """The value jq prints for a path of .name / ."quoted.name" / [i] steps (None = null)."""
    cur = doc
    for quoted, name, index in re.findall(r'\."([^"]+)"|\.([A-Za-z_]\w*)|\[(\d+)\]', path):
        if index:
            cur = cur[int(index)] if isinstance(cur, list) and int(index) < len(cur) else None
        else:
            cur = cur.get(quoted or name) if isinstance(cur, dict) else None
    return cur


def script(name: str, *args: str, env: dict | None = None, cwd: str = ROOT):
    e = dict(os.environ, **(env or {}))
    e.pop("OUT_DIR", None)
    return subprocess.run(["bash", os.path.join(EXP, name), *args], capture_output=True,
                          text=True, timeout=120, env=e, cwd=cwd)


def commands(out: str) -> list[str]:
    return [ln for ln in out.splitlines() if "tools.profiling.run_nwor_microbench" in ln
            and not ln.startswith("#")]


def outputs(cmds: list[str]) -> list[str]:
    return [os.path.basename(re.search(r"--output (\S+)", c).group(1)) for c in cmds]


# --- scripts --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SCRIPTS)
def test_help_lists_the_flags(name):
    p = script(name, "--help")
    assert p.returncode == 0 and p.stdout.startswith("Usage")
    for flag in ("--quick", "--llama", "--dry-run", "--force", "--out-dir", "TARGET_MODEL",
                 "DRAFT_MODEL"):
        assert flag in p.stdout, (name, flag)
    if name != "run_all_experiments.sh":
        assert "TENSOR_PARALLEL_SIZE" in p.stdout and "SPEC_METHOD" in p.stdout
    if name == "run_adaptive_grid.sh":
        assert "--adaptive-draft-length" in p.stdout
    if name == "run_early_exit_grid.sh":
        assert "--confidence-threshold" in p.stdout and "NCU" in p.stdout


def test_unknown_argument_fails():
    p = script("run_adaptive_grid.sh", "--bogus")
    assert p.returncode == 2 and "unknown argument" in p.stderr


def test_adaptive_grid_dry_run(tmp_path):
    p = script("run_adaptive_grid.sh", "--dry-run", "--out-dir", str(tmp_path))
    assert p.returncode == 0, p.stderr
    cmds = commands(p.stdout)
    assert len(cmds) == 3 * 3 * 2 * 3 * 2            # requests x tokens x T x k x adaptive
    names = outputs(cmds)
    assert len(set(names)) == len(names)
    assert names[:2] == ["run1_r12_t64_temp0.0_d10_adaptive0.json",
                         "run1_r12_t64_temp0.0_d10_adaptive1.json"]
    for r in (12, 36, 60):
        for t in (64, 128, 256):
            for temp in ("0.0", "0.7"):
                for k in (5, 10, 15):
                    for a in (0, 1):
                        assert sum(f"_r{r}_t{t}_temp{temp}_d{k}_adaptive{a}.json" in n
                                   for n in names) == 1
    for c in cmds:
        assert "--spec-method ngram" in c and re.search(r"--adaptive-draft-length [01] ", c)
        assert f"--output {tmp_path}/adaptive_grid/" in c
    assert not os.path.exists(tmp_path / "adaptive_grid")   # dry-run writes nothing
    quick = commands(script("run_adaptive_grid.sh", "--dry-run", "--quick",
                            "--out-dir", str(tmp_path)).stdout)
    assert len(quick) == 4 and set(outputs(quick)) <= set(names)   # quick names = full names


def test_early_exit_grid_dry_run(tmp_path):
    env = {"NCU": "0", "TARGET_MODEL": "/models/target"}
    p = script("run_early_exit_grid.sh", "--dry-run", "--out-dir", str(tmp_path), env=env)
    assert p.returncode == 0, p.stderr
    cmds = commands(p.stdout)
    assert len(cmds) == 4 * 2 * 2                     # thresholds x T x short/long
    names = outputs(cmds)
    assert names[0] == "run1_r36_t128_temp0.0_thresh0.0.json"
    assert names[2] == "run3_r36_t128_temp0.0_thresh0.5.json"
    assert len(set(names)) == 16
    for c in cmds:
        # the target drafts for itself by default
        assert "--spec-method draft_model --draft-model /models/target" in c
        assert "--confidence-threshold" in c and "--ncu" not in c
    assert "without Nsight Compute" in p.stdout
    # ncu absent (nothing at NCU_PATH): the script says so and runs without it
    p = script("run_early_exit_grid.sh", "--dry-run", "--quick", "--out-dir", str(tmp_path),
               env={"TARGET_MODEL": "/models/target", "NCU_PATH": str(tmp_path / "no-ncu"),
                    "PATH": "/usr/bin:/bin"})
    assert "not found" in p.stdout and all("--ncu" not in c for c in commands(p.stdout))
    # ncu present: every run gets --ncu
    fake = tmp_path / "ncu"
    fake.write_text("#!/bin/sh\necho 'Version 2025.1'\n")
    fake.chmod(0o755)
    p = script("run_early_exit_grid.sh", "--dry-run", "--quick", "--out-dir", str(tmp_path),
               env={"TARGET_MODEL": "/models/target", "NCU_PATH": str(fake)})
    quick = commands(p.stdout)
    assert outputs(quick) == ["run1_r36_t128_temp0.0_thresh0.0.json",
                              "run3_r36_t128_temp0.0_thresh0.5.json"]
    assert all("--ncu --ncu-passes kernels" in c and f"--ncu-path {fake}" in c for c in quick)


def test_oneoff_dry_run(tmp_path):
    p = script("run_oneoff_scenarios.sh", "--dry-run", "--out-dir", str(tmp_path),
               env={"NCU": "0", "TARGET_MODEL": "/m"})
    assert p.returncode == 0, p.stderr
    cmds = commands(p.stdout)
    seed = ["scenario_a_code_completion", "scenario_b_chatbot", "scenario_c_high_throughput",
            "scenario_d_creative_writing"]
    assert outputs(cmds) == [n + s for n in seed for s in (".json", "_baseline.json")]
    for c, n in zip(cmds, outputs(cmds)):
        scen = re.search(r"--scenario (\S+)", c).group(1)
        assert n.startswith("scenario_") and scen in n     # each its own prompt set
        if "baseline" in n:
            assert "--adaptive-draft-length 0 --confidence-threshold 0.0" in c
        else:
            assert "--adaptive-draft-length 1" in c
    c_run = cmds[4]
    assert "--confidence-threshold 0.5" in c_run and "--spec-method draft_model" in c_run
    assert len(commands(script("run_oneoff_scenarios.sh", "--dry-run", "--quick",
                               env={"TARGET_MODEL": "/m"}).stdout)) == 4


def test_all_dry_run(tmp_path):
    env = {"NCU": "0", "TARGET_MODEL": "/m"}
    p = script("run_all_experiments.sh", "--dry-run", "--out-dir", "rel", "--",
               "--enforce-eager", env=env, cwd=str(tmp_path))
    assert p.returncode == 0, p.stderr
    cmds = commands(p.stdout)
    assert len(cmds) == 108 + 16 + 8
    # a relative --out-dir is taken from where the script was started; extra flags go last
    assert all(f"--output {tmp_path}/rel/" in c and c.endswith("--enforce-eager") for c in cmds)
    quick = commands(script("run_all_experiments.sh", "--dry-run", "--quick", env=env).stdout)
    assert len(quick) == 4 + 2 + 4


@pytest.mark.parametrize("name", SCRIPTS)
def test_model_and_tp_overrides_reach_every_command(name, tmp_path):
    env = {"NCU": "0", "TARGET_MODEL": "/models/t", "DRAFT_MODEL": "/models/d",
           "TENSOR_PARALLEL_SIZE": "2"}
    p = script(name, "--dry-run", "--out-dir", str(tmp_path), env=env)
    assert p.returncode == 0, p.stderr
    cmds = commands(p.stdout)
    assert cmds
    for c in cmds:
        assert "--target-model /models/t " in c and "--tensor-parallel-size 2 " in c
        if "--spec-method ngram" not in c:
            assert "--draft-model /models/d " in c
    assert any("--draft-model /models/d " in c for c in cmds) == (name != "run_adaptive_grid.sh")
    # unset: no flags, the microbench's defaults (the engine's default model, TP 1)
    p = script(name, "--dry-run", "--quick", env={"NCU": "0", "TARGET_MODEL": "",
                                                  "TENSOR_PARALLEL_SIZE": ""})
    assert all("--target-model" not in c and "--tensor-parallel-size" not in c
               for c in commands(p.stdout) if "--spec-method ngram" in c)


def test_llama_part_is_opt_in_and_labelled(tmp_path):
    env = {"NCU": "0", "TARGET_MODEL": "/models/t", "TENSOR_PARALLEL_SIZE": "2"}
    plain = commands(script("run_adaptive_grid.sh", "--dry-run", "--out-dir", str(tmp_path),
                            env=env).stdout)
    p = script("run_adaptive_grid.sh", "--dry-run", "--llama", "--out-dir", str(tmp_path),
               env=env)
    assert p.returncode == 0, p.stderr
    cmds = commands(p.stdout)
    llama = [c for c in cmds if "/adaptive_grid_llama8b/" in c]
    assert cmds[:len(plain)] == plain and len(llama) == 3 * 3 * 2 * 2   # acc x r x k x a
    assert "CONTROLLED acceptance" in p.stdout
    for c in llama:
        assert f"--target-model {tmp_path}/models/llama3-8b-shapes " in c
        assert "--target-model /models/t" not in c and "--tensor-parallel-size 2 " in c
        assert "--load-format dummy" in c and re.search(r"--acceptance-rate 0\.[369] ", c)
        assert "--spec-method ngram" in c and "--scenario synthetic" in c
    assert outputs(llama)[:2] == ["run1_acc0.3_r12_t128_d10_adaptive0.json",
                                  "run1_acc0.3_r12_t128_d10_adaptive1.json"]
    assert not os.path.exists(tmp_path / "models")              # dry-run makes no folder
    quick = commands(script("run_all_experiments.sh", "--dry-run", "--quick", "--llama",
                            env=env).stdout)
    assert len(quick) == 4 + 4 + 2 + 4                           # + the Llama part's 4
    assert sum("adaptive_grid_llama8b" in c for c in quick) == 4
    quick = commands(script("run_all_experiments.sh", "--dry-run", "--quick", env=dict(
        env, LLAMA="1")).stdout)
    assert sum("adaptive_grid_llama8b" in c for c in quick) == 4   # LLAMA=1 = --llama


def test_prompt_sets():
    from tools.profiling import prompts
    for name in ("code_completion", "chatbot", "high_throughput", "creative_writing"):
        ps = prompts.text_prompts(name)
        assert len(ps) >= 20 and all(isinstance(p, str) and p.strip() for p in ps)
        assert name in prompts.SCENARIOS and prompts.DEFAULT_MAX_TOKENS[name] > 0
        assert name in mb.build_parser().format_help()


# --- summary --------------------------------------------------------------------------------
def _result(tmp_path, name, *, adaptive=False, threshold=0.0, k=10, requests=12, tps=100.0,
            lat=2.0, acc=0.5, dtoks=1000, short=0, dram=None, error=False,
            adaptive_stats=None, acc_rate=None):
    entry = {"nwor_mode": "off", "scv_mode": "graph", "adaptive_draft_length": adaptive,
             "confidence_threshold": threshold, "output_tokens_per_s": tps,
             "latency_avg_s": lat, "spec_acceptance_ratio": acc,
             "spec_num_draft_tokens": dtoks, "spec_draft_tokens_short_of_k": short,
             "ncu_metrics": {} if dram is None else {"dram__bytes_write.sum": dram},
             "adaptive_stats": adaptive_stats}
    if error:
        entry = {"nwor_mode": "off", "scv_mode": "graph", "error": "RuntimeError('x')"}
    doc = {"config": {"target_model": "m", "draft_model": None, "spec_method": "ngram",
                      "max_tokens": 64,
                      "args": {"scenario": "medium", "requests": requests, "batches": 2,
                               "warmup": 1, "max_tokens": 64, "temperature": 0.0,
                               "draft_tokens": k, "seed": 0, "acceptance_rate": acc_rate}},
           "summary": {"per_mode": [entry]}}
    (tmp_path / name).write_text(json.dumps(doc))


def test_summary_ratios(tmp_path):
    _result(tmp_path, "run1_a0.json", tps=100.0, lat=2.0, dtoks=1000, dram=4.0e9)
    _result(tmp_path, "run1_a1.json", adaptive=True, tps=125.0, lat=1.6, dtoks=600, short=400,
            dram=3.0e9)
    _result(tmp_path, "run2_a0.json", k=5, tps=80.0, lat=2.5, dtoks=500)
    _result(tmp_path, "run2_t05.json", k=5, threshold=0.5, tps=60.0, lat=3.0, dtoks=450,
            acc=0.6)
    _result(tmp_path, "run3_a1.json", requests=36, adaptive=True)      # no twin
    _result(tmp_path, "run4_a0.json", requests=60, error=True)
    (tmp_path / "notes.json").write_text('{"not": "a result"}')
    assert summarize.main([str(tmp_path)]) == 0
    rows = {r["file"]: r for r in json.loads((tmp_path / "summary.json").read_text())["rows"]}
    assert set(rows) == {"run1_a0.json", "run1_a1.json", "run2_a0.json", "run2_t05.json",
                         "run3_a1.json", "run4_a0.json"}
    a1 = rows["run1_a1.json"]
    assert a1["twin"] == "run1_a0.json"
    assert a1["tokens_per_s_vs_twin"] == pytest.approx(1.25)
    assert a1["latency_avg_s_vs_twin"] == pytest.approx(0.8)
    assert a1["draft_tokens_vs_twin"] == pytest.approx(0.6)
    assert a1["dram_write_bytes_vs_twin"] == pytest.approx(0.75)
    assert a1["acceptance_vs_twin"] == pytest.approx(1.0) and a1["stopped_tokens"] == 400
    t = rows["run2_t05.json"]
    assert t["twin"] == "run2_a0.json" and t["threshold"] == 0.5
    assert t["tokens_per_s_vs_twin"] == pytest.approx(0.75)
    assert t["latency_avg_s_vs_twin"] == pytest.approx(1.2)
    assert t["draft_tokens_vs_twin"] == pytest.approx(0.9)
    assert t["acceptance_vs_twin"] == pytest.approx(1.2)
    assert t["dram_write_bytes_vs_twin"] is None
    assert rows["run1_a0.json"]["twin"] == "(baseline)"
    assert rows["run1_a0.json"]["tokens_per_s_vs_twin"] is None
    assert rows["run3_a1.json"]["twin"] == "(none)"
    assert rows["run4_a0.json"]["error"]
    with open(tmp_path / "summary.csv") as f:
        by_file = {r["file"]: r for r in csv.DictReader(f)}
    assert float(by_file["run1_a1.json"]["latency_avg_s_vs_twin"]) == pytest.approx(0.8)
    assert summarize.main([str(tmp_path / "empty")]) == 1


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _assert_png(path):
    import matplotlib.image
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    img = matplotlib.image.imread(str(path))
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100


def test_summary_markdown_and_plots(tmp_path):
    grid = tmp_path / "adaptive_grid"
    grid.mkdir()
    for k, lat in ((5, 2.2), (10, 2.0), (15, 2.4)):
        _result(grid, f"run{k}_d{k}_adaptive0.json", k=k, lat=lat)
    _result(grid, "run10_d10_adaptive1.json", k=10, adaptive=True, lat=1.5,
            adaptive_stats={"steps_spec": 30, "steps_plain": 12, "probes": 2,
                            "k_hist": {"0": 12, "4": 20, "10": 10}})
    _result(grid, "run99_d10_adaptive0.json", requests=60, error=True)
    assert summarize.main([str(grid)]) == 0
    md = (grid / "summary.md").read_text()
    table = [ln for ln in md.splitlines() if ln.startswith("| run |")]
    assert len(table) == 2                           # the runs, the controller's decisions
    for name in ("run5_d5_adaptive0.json", "run10_d10_adaptive0.json", "run15_d15_adaptive0.json"):
        assert re.search(rf"^\| {re.escape(name)} \|", md, re.M)
    a1 = next(ln for ln in md.splitlines() if ln.startswith("| run10_d10_adaptive1.json |"))
    assert "| 0.75 |" in a1 and "run10_d10_adaptive0.json" in a1     # latency x = 1.5 / 2.0
    assert "ERROR" in next(ln for ln in md.splitlines() if "run99" in ln)
    assert "| run10_d10_adaptive1.json | 30 | 12 | 2 | 0:12 4:20 10:10 |" in md
    assert "CONTROLLED" not in md
    for png in ("latency_vs_k.png", "adaptive_vs_fixed.png"):
        assert f"](plots/{png})" in md
        _assert_png(grid / "plots" / png)
    assert not (grid / "plots" / "bytes_vs_threshold.png").exists()   # one threshold only
    with open(grid / "summary.csv") as f:
        row = next(r for r in csv.DictReader(f) if r["file"] == "run10_d10_adaptive1.json")
    assert row["adaptive_k_hist"] == "0:12 4:20 10:10" and row["adaptive_plain_steps"] == "12"
    assert not list(grid.rglob("*.tmp"))

    ee = tmp_path / "early_exit_grid"
    ee.mkdir()
    for x, dram, lat in ((0.0, 4e9, 2.0), (0.3, 3.5e9, 2.1), (0.5, 3e9, 2.2), (0.7, 2e9, 2.6)):
        _result(ee, f"run_thresh{x}.json", threshold=x, dram=dram, lat=lat, acc_rate=0.6)
    assert summarize.main([str(ee)]) == 0
    md = (ee / "summary.md").read_text()
    assert "CONTROLLED acceptance" in md
    # (the chained column is empty: these runs predate the field)
    assert re.search(r"^\| run_thresh0\.5\.json \| 0 \| 10 \| 0 \| 0\.5 \|  \| 0\.6 \| .*"
                     r"\| 3000 \| .*\| 0\.75 \| run_thresh0\.0\.json \|$", md, re.M)
    for png in ("latency_vs_threshold.png", "bytes_vs_threshold.png"):
        _assert_png(ee / "plots" / png)
    assert not (ee / "plots" / "latency_vs_k.png").exists()


# --- the microbench's flags ------------------------------------------------------------------
def test_microbench_help_lists_flags():
    h = mb.build_parser().format_help()
    assert "--adaptive-draft-length" in h and "--confidence-threshold" in h


def test_threshold_with_ngram_is_a_clear_error(tmp_path):
    out = tmp_path / "x.json"
    p = subprocess.run([sys.executable, "-m", "tools.profiling.run_nwor_microbench",
                        "--target-model", tiny_model("llama"), "--spec-method", "ngram",
                        "--confidence-threshold", "0.5", "--output", str(out)],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode != 0
    assert "error:" in p.stderr and "confidence_threshold" in p.stderr and "ngram" in p.stderr
    assert "Traceback" not in p.stderr and not out.exists()


def test_adaptive_run_writes_fields_and_answers_jq(tmp_path, capsys):
    out = tmp_path / "mb.json"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rc = mb.main(["--target-model", tiny_model("llama"), "--scenario", "synthetic",
                      "--requests", "2", "--batches", "1", "--warmup", "0", "--draft-tokens",
                      "3", "--max-tokens", "8", "--spec-method", "ngram",
                      "--adaptive-draft-length", "1", "--nwor-modes", "off", "--scv-modes",
                      "off", "--output", str(out), "--no-progress"])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    captured = capsys.readouterr()
    err = captured.err
    assert "adaptive_draft_length=1" in err and "confidence_threshold=0.0" in err  # start-up
    doc = json.loads(out.read_text())
    cfg, e = doc["config"], doc["summary"]["per_mode"][0]
    assert cfg["adaptive_draft_length"] is True and cfg["confidence_threshold"] == 0.0
    assert cfg["speculative_config"]["adaptive_draft_length"] is True
    assert e["adaptive_draft_length"] is True and e["confidence_threshold"] == 0.0
    assert e["spec_num_draft_tokens"] > 0
    assert e["spec_acceptance_ratio"] == pytest.approx(
        e["spec_num_accepted_tokens"] / e["spec_num_draft_tokens"])
    steps = e["generation_tokens"] - e["num_requests"] - e["spec_num_accepted_tokens"]
    assert e["spec_decode_steps"] == steps > 0
    assert e["spec_draft_tokens_short_of_k"] == steps * 3 - e["spec_num_draft_tokens"] >= 0
    assert "Adaptive draft length stats:" in captured.out
    # the controller's decisions over the measured batches: every decode step decided once
    a = e["adaptive_stats"]
    assert set(a) == {"steps_spec", "steps_plain", "probes", "k_hist"}
    assert a["steps_spec"] + a["steps_plain"] == sum(a["k_hist"].values()) > 0
    assert a["k_hist"].get("0", 0) == a["steps_plain"] and 0 <= a["probes"] <= a["steps_spec"]
    assert all(0 <= int(k) <= 3 for k in a["k_hist"])
    assert "Adaptive decisions (nwor=off scv=off):" in captured.out
    assert mb.adaptive_delta({"steps_spec": 2, "steps_plain": 1, "probes": 0,
                              "k_hist": {"0": 1, "3": 2}},
                             {"steps_spec": 5, "steps_plain": 1, "probes": 1,
                              "k_hist": {"0": 1, "2": 1, "3": 4}}) == {
        "steps_spec": 3, "steps_plain": 0, "probes": 1, "k_hist": {"2": 1, "3": 2}}
    values = {p: jq_path(doc, p) for p in JQ_PATHS}
    assert values[JQ_PATHS[0]] == e["latency_avg_s"] > 0
    assert values[JQ_PATHS[1]] == e["spec_num_draft_tokens"]
    assert values[JQ_PATHS[2]] == e["spec_acceptance_ratio"]
    assert values[JQ_PATHS[3]] is None and values[JQ_PATHS[4]] is None   # no --ncu: null
    if shutil.which("jq"):                     # and jq itself agrees
        for p, v in values.items():
            got = subprocess.run(["jq", "-r", p, str(out)], capture_output=True, text=True,
                                 check=True).stdout.strip()
            assert got == ("null" if v is None else str(v)) or float(got) == pytest.approx(v)
    # the ncu child (same workload under ncu) gets both flags
    args = mb.build_parser().parse_args(["--adaptive-draft-length", "1",
                                         "--confidence-threshold", "0.3"])
    argv = mb._child_argv(args, {"target_model": "t", "draft_model": "d",
                                 "spec_method": "draft_model", "tensor_parallel_size": 1},
                          "off", "graph", "c.json")
    assert argv[argv.index("--adaptive-draft-length") + 1] == "1"
    assert argv[argv.index("--confidence-threshold") + 1] == "0.3"
    # and the jq walker reads ncu_metrics when they are there
    assert jq_path({"summary": {"per_mode": [{"ncu_metrics": {"dram__bytes_write.sum": 7}}]}},
                   JQ_PATHS[3]) == 7


# --- resume: interrupt, rerun, nothing recomputed, nothing missing -----------------------------
def _procs_mentioning(text: str) -> list[int]:
    """Pids of live processes whose command line contains text (this test's unique folder)."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    pids.append(int(d))
        except OSError:
            pass
    return pids


def _run_errors(grid) -> str:
    """The errors (with tracebacks) recorded in the grid's result JSONs, for failure messages."""
    lines = []
    for path in sorted(grid.glob("*.json")):
        try:
            per = json.loads(path.read_text())["summary"]["per_mode"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            lines.append(f"{path.name}: unreadable: {e!r}")
            continue
        lines += [f"{path.name}: {e['error']}\n{e.get('traceback', '')}" for e in per
                  if "error" in e]
    return "\n".join(lines)


# Generous time boxes: a run takes seconds alone but the CI machine has 2 shared cores; every
# wait polls, so the test takes only as long as the runs do.
@pytest.mark.timeout(1800)
def test_interrupted_grid_resumes_without_recomputing(tmp_path):
    """The --quick adaptive grid (4 runs) on the tiny CPU model: SIGTERM to the script's process
    group once the first result exists, then a rerun. The finished result is kept as it was
    (same inode, same mtime), nothing half-written is left, the rerun fills in the rest."""
    out = tmp_path / "sweeps"
    grid = out / "adaptive_grid"
    argv = ["bash", os.path.join(EXP, "run_adaptive_grid.sh"), "--quick", "--out-dir", str(out),
            "--", "--scenario", "synthetic", "--requests", "2", "--batches", "1", "--warmup",
            "0", "--max-tokens", "8", "--scv-modes", "off", "--cpu-threads", "1"]
    # RUN_TIMEOUT: --quick's 150 s per run is sized for an H200, not for a loaded CI machine
    env = dict(os.environ, TARGET_MODEL=tiny_model("llama"), PYTHON=sys.executable,
               RUN_TIMEOUT="600")
    for name in ("OUT_DIR", "TENSOR_PARALLEL_SIZE", "LLAMA", "DRAFT_MODEL"):
        env.pop(name, None)
    names = ["run1_r12_t64_temp0.0_d10_adaptive0.json", "run1_r12_t64_temp0.0_d10_adaptive1.json",
             "run4_r12_t64_temp0.7_d10_adaptive0.json", "run4_r12_t64_temp0.7_d10_adaptive1.json"]
    first = grid / names[0]
    p = subprocess.Popen(argv, cwd=ROOT, env=env, start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while not first.exists() and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert first.exists() and p.poll() is None, (grid / "experiment.log").read_text()
        os.killpg(p.pid, signal.SIGTERM)
        assert p.wait(timeout=120) == 128 + signal.SIGTERM
        # the running microbench went with it (it runs under `timeout`, its own group)
        deadline = time.monotonic() + 120
        while _procs_mentioning(str(out)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _procs_mentioning(str(out))
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        for pid in _procs_mentioning(str(out)):
            os.kill(pid, signal.SIGKILL)
    log = (grid / "experiment.log").read_text()
    assert "interrupted (SIGTERM) during" in log
    # whatever exists is a whole result (written with tmp file + os.replace)
    done = {}
    for path in grid.glob("*.json"):
        doc = json.loads(path.read_text())
        assert all("error" not in e for e in doc["summary"]["per_mode"]), _run_errors(grid)
        st = path.stat()
        done[path.name] = (st.st_ino, st.st_mtime_ns)
    assert names[0] in done and len(done) < len(names)
    assert not (grid / "summary.md").exists()               # an interrupted grid has none

    p = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:] + _run_errors(grid)
    for name, (ino, mtime) in done.items():                 # nothing recomputed
        st = (grid / name).stat()
        assert (st.st_ino, st.st_mtime_ns) == (ino, mtime), name
        assert f"skip (done): {grid / name}" in p.stdout
    assert sorted(x.name for x in grid.glob("*.json") if x.name != "summary.json") == names
    for name in names:                                      # nothing missing
        doc = json.loads((grid / name).read_text())
        e = doc["summary"]["per_mode"][0]
        assert "error" not in e and e["latency_avg_s"] > 0
        assert (e["adaptive_stats"] is None) == name.endswith("adaptive0.json")
    assert not list(grid.glob("*.tmp"))
    md = (grid / "summary.md").read_text()
    assert all(f"| {n} |" in md for n in names) and "controller's decisions" in md
