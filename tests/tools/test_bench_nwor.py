"""tools/benchmarks/bench_nwor.py, the NWOR latency harness: its statistics and one tiny run on
the CPU (interleaved rounds, timed steps all with every request running, a stopping rule)."""
import importlib.util
import json
import os
import statistics

import pytest
import torch

from models_util import tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def bn():
    path = os.path.join(ROOT, "tools", "benchmarks", "bench_nwor.py")
    spec = importlib.util.spec_from_file_location("bench_nwor_under_test", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_t_quantiles_and_interval(bn):
    assert bn.t975(1) == 12.706 and bn.t975(10) == 2.228 and bn.t975(30) == 2.042
    for df, exact in ((40, 2.021), (60, 2.000), (120, 1.980), (1000, 1.962)):
        assert bn.t975(df) == pytest.approx(exact, abs=0.003)
    xs = [1.0, 1.02, 0.99, 1.01, 0.98]
    m, hw = bn.mean_ci(xs)
    assert m == pytest.approx(1.0)
    assert hw == pytest.approx(2.776 * statistics.stdev(xs) / 5 ** 0.5)
    assert bn.mean_ci([1.0])[1] == float("inf")


def test_cli_errors(bn):
    with pytest.raises(ValueError, match="--steps-per-round"):
        bn.main(["--steps-per-round", "0"])
    with pytest.raises(ValueError, match="--models"):
        bn.main(["--models", "gpt9"])
    with pytest.raises(ValueError, match="--target"):
        bn.main(["--target", "0"])


def test_tiny_run_cpu(bn, tmp_path):
    out = tmp_path / "nwor.json"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert bn.main(["--models", "smollm2", "--model", tiny_model("llama"), "--batches", "2",
                        "--ks", "2", "--steps-per-round", "3", "--min-rounds", "2",
                        "--max-rounds", "3", "--target", "0.999", "--max-model-len", "256",
                        "--output", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    row = json.loads(out.read_text())["rows"][0]
    assert row["timer"] == "wall_clock"
    # the stopping rule: it stops at the first round >= min_rounds whose 95% half-width is
    # within target x mean, else at max_rounds
    ratios = row["ratio_per_round"]
    n = row["rounds"]
    assert len(ratios) == n and 2 <= n <= 3
    met = [i for i in range(2, n + 1)
           if bn.mean_ci(ratios[:i])[1] <= 0.999 * bn.mean_ci(ratios[:i])[0]]
    if met:
        assert met[0] == n and row["converged"] and row["stopped_by"] == "converged"
    else:
        assert n == 3 and not row["converged"] and row["stopped_by"] == "max_rounds"
    for m in ("off", "stage"):
        per = row["ms_per_step_per_round"][m]
        assert len(per) == n and all(x > 0 for x in per)
    r0 = row["ms_per_step_per_round"]["stage"][0] / row["ms_per_step_per_round"]["off"][0]
    assert row["ratio_per_round"][0] == pytest.approx(r0)
    lo, hi = row["ratio_ci95"]
    mean, hw = bn.mean_ci(ratios)
    assert row["ratio_stage_over_off_mean"] == pytest.approx(mean)
    assert (lo, hi) == pytest.approx((mean - hw, mean + hw))
    # staging ran in stage mode only, and the timed steps verified drafts in both
    assert row["counters_off"]["vllm:nwor_tokens_staged"] == 0
    assert row["counters_stage"]["vllm:nwor_tokens_staged"] == \
        row["counters_stage"]["vllm:spec_decode_num_draft_tokens"] > 0
