"""tools/eagle: the self-distillation data (files, manifest, seed determinism), the held-out
overlap check, the dense forward against transformers, training (the loss falls when a few
sequences are overfitted), and the saved head loading through EagleProposer with greedy output
unchanged. A tiny random Llama with a character-level tokenizer stands in for the target."""
import json
import os
import random
import shutil
import tempfile

import numpy as np
import pytest
import torch

from models_util import tiny_model
from tools.eagle import data, dense, gen_data, head_io, prompts, train
from vllm import LLM, SamplingParams
from vllm.model_executor.models.eagle import EagleHead


@pytest.fixture(scope="module")
def target():
    """The tiny Llama with a tokenizer that tells texts apart (one token per character)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, Regex
    from transformers import PreTrainedTokenizerFast
    path = tempfile.mkdtemp(prefix="eagle-target-")
    src = tiny_model("llama")
    for f in os.listdir(src):
        if f in ("config.json", "generation_config.json") or f.endswith(".safetensors"):
            shutil.copy(os.path.join(src, f), path)
    chars = ["<unk>", "<s>", "</s>"] + [chr(c) for c in range(32, 127)] + ["\n"]
    tok = Tokenizer(models.WordLevel({c: i for i, c in enumerate(chars)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                            eos_token="</s>").save_pretrained(path)
    return path


def _gen(target, out, seed=0):
    return gen_data.main(["--model", target, "--out", out, "--num-prompts", "12",
                          "--num-eval", "6", "--max-tokens", "12", "--max-prompt-tokens", "480",
                          "--max-model-len", "512", "--enforce-eager", "--seed", str(seed)])


@pytest.fixture(scope="module")
def dataset(target):
    out = tempfile.mkdtemp(prefix="eagle-data-")
    _gen(target, out)
    return out


def test_gen_data_files_manifest_and_seed(target, dataset):
    m = json.load(open(os.path.join(dataset, "manifest.json")))
    # prompts longer than --max-prompt-tokens (one token per character here) are skipped
    n = m["num_sequences"]
    assert n == m["prompts_available"] >= 4 and m["seed"] == 0 and m["num_eval_prompts"] > 0
    for name in data.FILES:
        assert m["files"][name]["sha256"] == data.sha256(os.path.join(dataset, name))
    seqs = data.read_sequences(dataset)
    plens = np.load(os.path.join(dataset, "prompt_lens.npy"))
    assert [len(s) - p for s, p in zip(seqs, plens)] == [12] * n    # prompt + 12 generated
    assert m["num_tokens"] == sum(len(s) for s in seqs)
    assert np.load(os.path.join(dataset, "tokens.npy")).dtype == np.int32
    again = tempfile.mkdtemp(prefix="eagle-data-")
    m2 = _gen(target, again)                      # same seed: the same tokens, byte for byte
    for name in ("tokens.npy", "offsets.npy", "eval_prompts.jsonl"):
        assert m2["files"][name]["sha256"] == m["files"][name]["sha256"]


def test_eval_prompts_disjoint_and_overlap_caught(dataset):
    train_texts = prompts.train_prompts(200, 0)
    ev = prompts.eval_prompts(40, 0)
    assert prompts.find_overlap(train_texts, ev) == []
    # injected: an eval text inside a training prompt, a training prompt inside an eval text
    leak = train_texts[:5] + ["Please answer: " + ev[3] + " Thanks."]
    assert prompts.find_overlap(leak, ev) == [(3, "eval text inside a training prompt")]
    assert prompts.find_overlap(train_texts, ev[:2] + ["x " + train_texts[7] + " y"])[0][0] == 2
    # token level: eval ids inside a training sequence (but not across two sequences)
    seqs = [np.array([5, 6, 7, 8], np.int32), np.array([9, 10], np.int32)]
    assert prompts.find_overlap([], ["a", "b"], seqs, [[6, 7], [8, 9]]) == [
        (0, "eval token sequence inside a training sequence")]
    # what gen_data wrote: eval prompts and their ids are disjoint from the training data
    items = data.read_eval_prompts(dataset)
    assert prompts.find_overlap([], [it["text"] for it in items], data.read_sequences(dataset),
                                [it["prompt_token_ids"] for it in items]) == []


def test_dense_target_matches_transformers(target):
    from transformers import AutoModelForCausalLM
    model, _ = train.load_target(target, torch.device("cpu"), torch.float32)
    ids = torch.randint(3, 98, (2, 17), generator=torch.Generator().manual_seed(0))
    ours = model.compute_logits(dense.target_hidden(model, ids))
    hf = AutoModelForCausalLM.from_pretrained(target, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        ref = hf(ids).logits
    torch.testing.assert_close(ours, ref, atol=2e-4, rtol=2e-4)


def test_head_save_roundtrip(target):
    model, cfg = train.load_target(target, torch.device("cpu"), torch.float32)
    head = head_io.new_head(cfg, "cpu", seed=3)
    out = head_io.save_head(head, cfg, tempfile.mkdtemp(prefix="eagle-head-"),
                            dtype=torch.float32)
    assert sorted(os.listdir(out)) == ["SHA256SUMS", "config.json", "model.safetensors"]
    from vllm.model_executor.model_loader import loader
    back = EagleHead(head_io.head_config(cfg))
    back.load_weights(loader._safetensors_weights(out))
    for (n, a), (_, b) in zip(head.named_parameters(), back.named_parameters()):
        assert torch.equal(a.detach(), b), n


def test_train_loss_falls_and_head_is_lossless(target, dataset):
    head_dir = tempfile.mkdtemp(prefix="eagle-head-")
    # overfit the first 4 sequences: a fixed tiny dataset
    small = tempfile.mkdtemp(prefix="eagle-small-")
    seqs = data.read_sequences(dataset)[:4]
    data.write_dataset(small, seqs, [1] * 4, [], {"seed": 0})
    res = train.main(["--model", target, "--data", small, "--out", head_dir, "--steps", "25",
                      "--batch-tokens", "100000", "--max-len", "512", "--lr", "1e-2"])
    assert res["steps"] == 25 and res["final_loss"] < res["initial_loss"]
    last = res["loss_curve"]["loss"][-1]
    assert last < 0.85 * res["initial_loss"], (res["initial_loss"], last)
    assert os.path.getsize(os.path.join(head_dir, "loss_curve.png")) > 0
    cfg = json.load(open(os.path.join(head_dir, "config.json")))
    assert cfg["num_hidden_layers"] == 1 and cfg["torch_dtype"] == "bfloat16"

    # the saved head drafts through the engine; greedy output equals no speculation
    items = data.read_eval_prompts(dataset)[:3]
    ps = [{"prompt_token_ids": it["prompt_token_ids"][:60]} for it in items]
    sp = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    base = LLM(target, enforce_eager=True, max_model_len=512)
    want = [o.outputs[0].token_ids for o in base.generate(ps, sp, use_tqdm=False)]
    spec = LLM(target, enforce_eager=True, max_model_len=512,
               speculative_config={"method": "eagle", "model": head_dir,
                                   "num_speculative_tokens": 3})
    assert [o.outputs[0].token_ids for o in spec.generate(ps, sp, use_tqdm=False)] == want
    assert spec.get_metrics_dict()["vllm:spec_decode_num_drafts"] > 0


def test_init_head_continues_training(target, dataset):
    """--init-head starts from a saved head: its first loss is about the loss the saved head
    ended with, well below a fresh init's first loss on the same data."""
    small = tempfile.mkdtemp(prefix="eagle-small-")
    data.write_dataset(small, data.read_sequences(dataset)[:4], [1] * 4, [], {"seed": 0})
    common = ["--model", target, "--data", small, "--batch-tokens", "100000", "--max-len", "512",
              "--lr", "1e-2", "--device", "cpu"]
    first_dir = tempfile.mkdtemp(prefix="eagle-head-")
    first = train.main(common + ["--out", first_dir, "--steps", "25"])
    again = train.main(common + ["--out", tempfile.mkdtemp(prefix="eagle-head-"), "--steps", "3",
                                 "--init-head", first_dir])
    ended = first["loss_curve"]["loss"][-1]
    # the saved head is bf16 and the last step's update is not in `ended`: about, not equal
    assert again["initial_loss"] < 0.5 * (ended + first["initial_loss"]), (first, again)
    assert again["initial_loss"] == pytest.approx(ended, rel=0.1)
    sums = dict(reversed(line.split()) for line in open(os.path.join(first_dir, "SHA256SUMS")))
    assert again["init_head_sha256"]["model.safetensors"] == sums["model.safetensors"]
    assert again["init_head_sha256"]["SHA256SUMS"] == data.sha256(
        os.path.join(first_dir, "SHA256SUMS"))
    assert again["init_head"] == os.path.abspath(first_dir)
    assert first["init_head"] is None and first["init_head_sha256"] is None


def test_time_budget_stops_and_saves(target, dataset):
    head_dir = tempfile.mkdtemp(prefix="eagle-head-")
    res = train.main(["--model", target, "--data", dataset, "--out", head_dir,
                      "--steps", "100000", "--time-budget-s", "0.5", "--batch-tokens", "512"])
    assert res["stopped_by"] == "time budget" and res["steps"] < 100000
    assert os.path.isfile(os.path.join(head_dir, "model.safetensors"))


def test_lr_schedule():
    assert train.lr_at(0.0, 1.0) == 0.0
    assert train.lr_at(0.03, 1.0) == pytest.approx(1.0)
    assert train.lr_at(1.0, 1.0) == pytest.approx(0.1)
    assert train.lr_at(0.5, 1.0) < train.lr_at(0.2, 1.0)


def test_batches_cover_and_pad():
    seqs = [np.arange(n, dtype=np.int32) + 3 for n in (5, 9, 2, 20)]
    it = train.batches(seqs, max_len=8, batch_tokens=16, rng=random.Random(0))
    seen, n = 0, 0
    while seen < 5 + 8 + 1 + 8 + 8 + 4 - 1:      # one epoch: every piece of >= 3 tokens
        ids, lens = next(it)
        n += 1
        assert ids.shape[1] == int(lens.max()) <= 8 and int(lens.min()) >= 3
        for row, k in zip(ids, lens):
            assert (row[k:] == 0).all()
        seen += int(lens.sum())
    assert n <= 5
