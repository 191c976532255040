"""Beyond one machine: two torchrun launches (--nnodes 2, one process each) stand in for two
hosts; the tensor-parallel group forms through torch.distributed's env:// rendezvous
(MASTER_ADDR / MASTER_PORT / RANK / WORLD_SIZE as torchrun sets them). Rank 0 runs the user's
program; rank 1 serves it and exits with it. Greedy tokens equal TP=1 in this process."""
from __future__ import annotations

import json
import subprocess
import time

import pytest

from dist_util import DEVICES, PYTHON, REPO, free_port, subprocess_env
from models_util import tiny_model
from vllm import LLM, SamplingParams

PROMPTS = [[5, 6, 7, 8, 9], [30, 31, 30, 31], [77, 3, 99]]

_PROGRAM = """
import json, sys
from vllm import LLM, SamplingParams
if __name__ == "__main__":
    model, device, out = sys.argv[1:4]
    llm = LLM(model, tensor_parallel_size=2, distributed_init_method="env://", device=device,
              dtype="float32", enforce_eager=True, max_model_len=256)
    # Only rank 0 gets here.
    sp = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in %r], sp, use_tqdm=False)
    with open(out, "w") as f:
        json.dump([list(o.outputs[0].token_ids) for o in outs], f)
    llm.shutdown()
""" % (PROMPTS,)


@pytest.mark.parametrize("device", DEVICES)
def test_two_node_tp_through_env_rendezvous(device, tmp_path):
    model = tiny_model("llama")
    prog = tmp_path / "program.py"
    prog.write_text(_PROGRAM)
    out = tmp_path / "tokens.json"
    port = free_port(pair=True)      # torch.distributed on port, vllm's control on port + 1
    procs = []
    for node in (0, 1):
        # One "host" per launch: node 1's GPU is its local cuda:0 (CUDA_VISIBLE_DEVICES).
        env = subprocess_env(**({"CUDA_VISIBLE_DEVICES": str(node)} if device == "cuda" else {}))
        cmd = [PYTHON, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node),
               "--nproc-per-node", "1", "--master-addr", "127.0.0.1",
               "--master-port", str(port), str(prog), model, device, str(out)]
        log = open(tmp_path / f"node{node}.log", "wb")
        procs.append((subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log,
                                       stderr=subprocess.STDOUT), log))
    t0 = time.monotonic()
    try:
        codes = [p.wait(timeout=240) for p, _ in procs]
    finally:
        for p, log in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            log.close()
    logs = "\n".join((tmp_path / f"node{n}.log").read_text(errors="replace")[-3000:]
                     for n in (0, 1))
    assert codes == [0, 0], logs
    assert time.monotonic() - t0 < 240
    got = json.loads(out.read_text())
    ref = LLM(model, device=device, dtype="float32", enforce_eager=True, max_model_len=256)
    want = [list(o.outputs[0].token_ids) for o in ref.generate(
        [{"prompt_token_ids": p} for p in PROMPTS],
        SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True), use_tqdm=False)]
    assert got == want


def test_env_rendezvous_needs_the_variables(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        LLM(tiny_model("llama"), tensor_parallel_size=2, distributed_init_method="env://",
            device="cpu", enforce_eager=True)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29999")
    with pytest.raises(ValueError, match="WORLD_SIZE=4 but tensor_parallel_size=2"):
        LLM(tiny_model("llama"), tensor_parallel_size=2, distributed_init_method="env://",
            device="cpu", enforce_eager=True)
    with pytest.raises(ValueError, match="distributed_init_method"):
        LLM(tiny_model("llama"), distributed_init_method="tcp://x:1", device="cpu")
