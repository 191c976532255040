"""The scheduler-only host-time harness runs end to end and reports per-step times."""
import json
import subprocess
import sys


def test_sched_host_time_runs(tmp_path):
    out = tmp_path / "sched.json"
    subprocess.run([sys.executable, "-m", "tools.benchmarks.sched_host_time", "--batch", "4",
                    "--steps", "5", "--repeats", "2", "--output", str(out)], check=True,
                   capture_output=True, timeout=300)
    res = json.loads(out.read_text())
    assert len(res["us_per_step"]) == 2 and all(u > 0 for u in res["us_per_step"])
    assert res["us_per_request_min"] == res["us_per_step_min"] / 4
    assert res["config"]["batch"] == 4
