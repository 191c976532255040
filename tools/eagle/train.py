"""Train an EAGLE-1 head on the target's own features, recomputed on the fly.

Each batch of token sequences [B, L] (from tools.eagle.gen_data) runs through the target (the
engine's model code and loader, dense causal attention, no_grad) for its final hidden states h
(after the final norm: the tensor the runner hands EagleProposer). Row i of the head reads
(embed(token[i + 1]), h[i]) and predicts f[i + 1]; the loss (EAGLE-1) is

    smooth_l1(f[i + 1], h[i + 1])  +  W_CLS * cross_entropy(lm_head(f[i + 1]), argmax lm_head(h[i + 1]))

i.e. feature regression plus agreement of the drafted token with the target's greedy choice
(the token the verifier accepts at temperature 0). The embedding and LM head are the target's,
frozen. AdamW, linear warm-up then cosine decay over max(step / steps, elapsed / budget), fixed
seeds, bf16 autocast on CUDA. `--init-head DIR` starts from a saved head (e.g. the shipped one)
instead of the fresh init, with the same schedule, to keep training across runs. Writes the head (config.json + model.safetensors bf16 +
SHA256SUMS), loss_curve.png and train_result.json.

    python3 -m tools.eagle.train --model SmolLM2-135M-Instruct --data /tmp/eagle_data \
        --out /tmp/eagle_head --time-budget-s 200 \
        [--init-head vllm/data/eagle/smollm2-135m-instruct]
"""
from __future__ import annotations

import argparse
import math
import os
import random
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from tools.common import run_metadata, write_json
from tools.eagle.data import read_sequences
from tools.eagle.dense import head_forward, target_hidden
from tools.eagle.head_io import load_head, new_head, save_head
from vllm.model_executor.model_loader import loader

W_CLS = 0.1     # EAGLE-1's weight of the token loss next to the feature regression


def load_target(model: str, device: torch.device, dtype: torch.dtype):
    """The engine's own model (same loader as the runner), plus its config."""
    path = loader.resolve(model)
    cfg = loader.load_hf_config(path, "auto")
    target = loader.load_model(cfg, path, "auto", dtype, device)
    for p in target.parameters():
        p.requires_grad_(False)
    return target, cfg


def batches(seqs: list[np.ndarray], max_len: int, batch_tokens: int, rng: random.Random):
    """Endless shuffled batches: (ids [B, L] right-padded with 0, lens [B]); sequences longer
    than max_len are cut into max_len windows (each trained from its own start)."""
    pieces = [s[i:i + max_len] for s in seqs for i in range(0, len(s), max_len)]
    pieces = [p for p in pieces if len(p) >= 3]
    if not pieces:
        raise ValueError("no training sequence of 3 tokens or more")
    while True:
        order = list(range(len(pieces)))
        rng.shuffle(order)
        cur: list[np.ndarray] = []
        for i in order:
            cur.append(pieces[i])
            if len(cur) * max(len(p) for p in cur) >= batch_tokens:
                yield _pad(cur)
                cur = []
        if cur:
            yield _pad(cur)


def _pad(pieces):
    L = max(len(p) for p in pieces)
    ids = np.zeros((len(pieces), L), np.int64)
    for b, p in enumerate(pieces):
        ids[b, :len(p)] = p
    return torch.from_numpy(ids), torch.tensor([len(p) for p in pieces])


def eagle_loss(head, target, ids: torch.Tensor, lens: torch.Tensor, w_cls: float = W_CLS,
               feature_noise: float = 0.0):
    """(loss, metrics) of one batch: ids [B, L], lens [B]."""
    hid = target_hidden(target, ids)                              # [B, L, H], no grad
    with torch.no_grad():
        emb = target.embed(ids[:, 1:])                            # [B, L-1, H]
        inp = hid[:, :-1]
        if feature_noise > 0:
            inp = inp + feature_noise * torch.randn_like(inp)
    pred = head_forward(head, emb, inp)                           # [B, L-1, H]: f[i+1]
    L = ids.shape[1]
    valid = torch.arange(L - 1, device=ids.device)[None, :] < (lens.to(ids.device) - 1)[:, None]
    p, h = pred[valid].float(), hid[:, 1:][valid].float()         # [N, H]
    reg = F.smooth_l1_loss(p, h)
    with torch.no_grad():
        labels = target.compute_logits(h.to(hid.dtype)).argmax(-1)   # target's greedy token
    logits = target.compute_logits(p.to(hid.dtype))               # frozen LM head, grads to p
    cls = F.cross_entropy(logits, labels)
    acc = (logits.argmax(-1) == labels).float().mean()
    return reg + w_cls * cls, {"reg": reg.item(), "cls": cls.item(), "top1": acc.item(),
                               "rows": int(valid.sum())}


def lr_at(progress: float, lr: float, warmup: float = 0.03, floor: float = 0.1) -> float:
    if progress < warmup:
        return lr * progress / warmup
    t = min(1.0, (progress - warmup) / (1 - warmup))
    return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))


def plot_curve(steps, losses, out_png: str) -> bool:
    """The loss curve as a PNG; False (and no file) where matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, losses, lw=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (smooth L1 + %.2g CE)" % W_CLS)
    ax.set_yscale("log")
    ax.set_title("EAGLE head training")
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return True


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="SmolLM2-135M-Instruct")
    ap.add_argument("--data", required=True, help="folder written by tools.eagle.gen_data")
    ap.add_argument("--out", required=True, help="head folder to write")
    ap.add_argument("--results", default=None,
                    help="folder for loss_curve.png and train_result.json (default: --out)")
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--time-budget-s", type=float, default=None,
                    help="stop cleanly after this many seconds of training and save")
    ap.add_argument("--batch-tokens", type=int, default=16384)
    ap.add_argument("--max-len", type=int, default=768)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--w-cls", type=float, default=W_CLS)
    ap.add_argument("--feature-noise", type=float, default=0.0,
                    help="std of Gaussian noise added to the input features (0: none)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init-head", default=None,
                    help="head folder (upstream EAGLE-1 layout) to continue training from "
                         "instead of the fresh init")
    ap.add_argument("--device", default=None)
    ap.add_argument("--log-every", type=int, default=10)
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    results = args.results or args.out
    os.makedirs(results, exist_ok=True)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = dev.type == "cuda"
    t_load = time.perf_counter()
    target, cfg = load_target(args.model, dev, torch.bfloat16 if cuda else torch.float32)
    init_sha = None
    if args.init_head:
        head, init_sha = load_head(cfg, args.init_head, dev, args.seed)
    else:
        head = new_head(cfg, dev, args.seed)
    seqs = read_sequences(args.data)
    load_s = time.perf_counter() - t_load
    opt = torch.optim.AdamW(head.parameters(), lr=args.lr, betas=(0.9, 0.95),
                            weight_decay=args.weight_decay)
    it = batches(seqs, args.max_len, args.batch_tokens, random.Random(args.seed))
    log_steps, log_loss, hist = [], [], []
    t0 = time.perf_counter()
    bar = tqdm(total=args.steps, desc="train")
    step, stopped_by = 0, "steps"
    while step < args.steps:
        elapsed = time.perf_counter() - t0
        if args.time_budget_s is not None and elapsed >= args.time_budget_s:
            stopped_by = "time budget"
            break
        progress = step / args.steps
        if args.time_budget_s:
            progress = max(progress, elapsed / args.time_budget_s)
        for gr in opt.param_groups:
            gr["lr"] = lr_at(progress, args.lr)
        ids, lens = next(it)
        ids = ids.to(dev, non_blocking=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
            loss, m = eagle_loss(head, target, ids, lens, args.w_cls, args.feature_noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        opt.step()
        step += 1
        m["loss"] = loss.item()
        hist.append(m)
        log_steps.append(step)
        log_loss.append(m["loss"])
        bar.update(1)
        if step % args.log_every == 0:
            bar.set_postfix(loss=f"{m['loss']:.4f}", top1=f"{m['top1']:.3f}")
    bar.close()
    train_s = time.perf_counter() - t0
    save_head(head, cfg, args.out, extra_config={"eagle_training": {
        "target": args.model, "steps": step, "seed": args.seed, "data": args.data,
        "init_head": init_sha and {"path": args.init_head, "sha256": init_sha}}})
    png = plot_curve(log_steps, log_loss, os.path.join(results, "loss_curve.png"))
    tail = hist[-min(50, len(hist)):] if hist else []

    def mean(key, rows):
        return float(np.mean([r[key] for r in rows])) if rows else None
    res = {"kind": "eagle head training", **run_metadata(), "args": vars(args),
           "steps": step, "stopped_by": stopped_by, "load_s": load_s, "train_s": train_s,
           "steps_per_s": step / max(train_s, 1e-9),
           "tokens_seen": int(sum(r["rows"] for r in hist)),
           "initial_loss": hist[0]["loss"] if hist else None,
           "final_loss": mean("loss", tail), "final_reg": mean("reg", tail),
           "final_cls": mean("cls", tail), "final_top1": mean("top1", tail),
           "loss_curve": {"steps": log_steps, "loss": log_loss}, "loss_curve_png": png,
           "head": os.path.abspath(args.out),
           "init_head": args.init_head and os.path.abspath(args.init_head),
           "init_head_sha256": init_sha}
    write_json(os.path.join(results, "train_result.json"), res)
    print(f"train: {step} steps in {train_s:.1f} s ({stopped_by}); loss {res['initial_loss']} "
          f"-> {res['final_loss']}, top-1 agreement {res['final_top1']}; head -> {args.out}")
    return res


if __name__ == "__main__":
    main()
