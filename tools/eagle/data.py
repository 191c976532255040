"""The EAGLE training set on disk: token id sequences (prompt + response) as one flat int32
array plus offsets, with a manifest (seed, counts, sizes, sha256 of every file).

    DIR/tokens.npy       int32 [total tokens]     all sequences, back to back
    DIR/offsets.npy      int64 [n + 1]            sequence i is tokens[offsets[i]:offsets[i+1]]
    DIR/prompt_lens.npy  int32 [n]                the prompt's share of each sequence
    DIR/eval_prompts.jsonl                        held-out prompts: {"text", "prompt_token_ids"}
    DIR/manifest.json"""
from __future__ import annotations

import json
import os
from typing import Any, Sequence

import numpy as np

from vllm.v1.spec_decode.shipped import sha256_file as sha256

FILES = ("tokens.npy", "offsets.npy", "prompt_lens.npy", "eval_prompts.jsonl")




def write_dataset(out_dir: str, seqs: Sequence[Sequence[int]], prompt_lens: Sequence[int],
                  eval_items: Sequence[dict], info: dict[str, Any]) -> dict[str, Any]:
    os.makedirs(out_dir, exist_ok=True)
    lens = np.array([len(s) for s in seqs], np.int64)
    offsets = np.zeros(len(seqs) + 1, np.int64)
    np.cumsum(lens, out=offsets[1:])
    flat = np.concatenate([np.asarray(s, np.int32) for s in seqs]) if seqs else \
        np.zeros(0, np.int32)
    np.save(os.path.join(out_dir, "tokens.npy"), flat)
    np.save(os.path.join(out_dir, "offsets.npy"), offsets)
    np.save(os.path.join(out_dir, "prompt_lens.npy"), np.asarray(prompt_lens, np.int32))
    with open(os.path.join(out_dir, "eval_prompts.jsonl"), "w") as f:
        for item in eval_items:
            f.write(json.dumps(item) + "\n")
    manifest = dict(info)
    manifest.update(
        num_sequences=len(seqs), num_tokens=int(flat.size),
        num_response_tokens=int(flat.size - int(np.sum(prompt_lens))),
        mean_sequence_len=float(lens.mean()) if len(seqs) else 0.0,
        num_eval_prompts=len(eval_items),
        files={n: {"bytes": os.path.getsize(os.path.join(out_dir, n)),
                   "sha256": sha256(os.path.join(out_dir, n))} for n in FILES})
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
    return manifest


def read_sequences(data_dir: str) -> list[np.ndarray]:
    """The training sequences (views into one int32 array), checked against the manifest."""
    manifest = json.load(open(os.path.join(data_dir, "manifest.json")))
    for n in ("tokens.npy", "offsets.npy"):
        want = manifest["files"][n]["sha256"]
        if sha256(os.path.join(data_dir, n)) != want:
            raise ValueError(f"{data_dir}/{n} does not match its manifest sha256")
    flat = np.load(os.path.join(data_dir, "tokens.npy"))
    offsets = np.load(os.path.join(data_dir, "offsets.npy"))
    return [flat[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]


def read_eval_prompts(data_dir: str) -> list[dict]:
    with open(os.path.join(data_dir, "eval_prompts.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]
