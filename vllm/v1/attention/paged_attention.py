"""Attention of this step's query tokens over [paged context cache + this step's own K/V].

Trio: ``_paged_attention_kernel`` (Triton; plus ``_paged_attention_reduce_kernel`` that merges the
context splits of flash-decoding), ``paged_attention`` (public: kernel on CUDA, else the
reference), ``paged_attention_ref`` (plain torch, what the CPU engine runs).

Semantics (flattened batch of T tokens from R requests):
  request r owns rows query_start_loc[r] : query_start_loc[r + 1] of q / k_new / v_new;
  its first context_lens[r] positions are already in the paged cache (block_tables[r]);
  its query token j attends to cache positions [0, context_lens[r]) and to this step's tokens 0..j
  (read from k_new / v_new, never from the cache: NWOR stage mode does not write drafts there).
  GQA: q head h reads kv head h // G, G = Hq // Hkv. Rows with token_req_idx == -1 are padding
  (CUDA-graph padding) and get zeros. query_start_loc must be non-decreasing: padded requests
  repeat the last value (zero tokens), and every row with token_req_idx >= 0 lies in its
  request's range.

Kernel design: a program owns (a tile of BLOCK_Q consecutive query tokens of one request, one kv
head); its BLOCK_M = BLOCK_Q * G (padded to a power of two >= 16) rows are (token, q head of the
group) pairs, so one tl.dot serves the whole GQA group and K/V are read once per tile. It runs an
online softmax over the cached context (gathered through the block table, BLOCK_N positions per
step, any page size) and then over this step's tokens with a causal mask. Request r's tiles are
numbered from query_start_loc[r] // BLOCK_Q + r, so grid = T // BLOCK_Q + R is an upper bound that
depends on shapes only (CUDA-graph safe); a program finds its request by binary search. When there
are few programs (small-batch decode) the context is split NUM_SPLITS ways (flash-decoding); the
splits write fp32 partials + log-sum-exp and a second kernel merges them.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn.functional as F

from vllm.platform import has_triton, kernel_enabled, kernel_for

if has_triton():
    import triton
    import triton.language as tl

    @triton.jit
    def _softmax_step(q, k, v, keep, m_i, l_i, acc, scale_log2, IEEE: tl.constexpr):
        """Online-softmax update of one key block. q [M, D], k [D, N], v [N, D], keep [M, N]."""
        if IEEE:
            s = tl.dot(q, k, input_precision="ieee")
        else:
            s = tl.dot(q, k)
        s = tl.where(keep, s * scale_log2, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # A row with no key yet keeps m = -inf; shift by 0 so exp2 gives 0, not NaN.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        if IEEE:
            pv = tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            pv = tl.dot(p.to(v.dtype), v)
        return m_new, l_i, acc * alpha[:, None] + pv

    @triton.jit
    def _ctx_step(n0, c_hi, q, m_i, l_i, acc, bt_row, kv_h, scale_log2,
                  stride_c_kv, stride_c_blk, stride_c_off, stride_c_d,
                  offs_n, offs_d, d_ok, PAGE_SIZE: tl.constexpr, IEEE: tl.constexpr):
        """Cached positions n0 .. n0 + BLOCK_N (< c_hi), gathered through the block table."""
        pos = n0 + offs_n
        n_ok = pos < c_hi
        blk = tl.load(bt_row + pos // PAGE_SIZE, mask=n_ok, other=0).to(tl.int64)
        base = blk * stride_c_blk + (pos % PAGE_SIZE).to(tl.int64) * stride_c_off
        # K and V share one [N, D] address tensor (V = K + stride_c_kv): fewer registers.
        ptrs = kv_h + base[:, None] + offs_d[None, :] * stride_c_d
        ld_ok = n_ok[:, None] & d_ok[None, :]
        k = tl.load(ptrs, mask=ld_ok, other=0.0)                                # [N, D]
        v = tl.load(ptrs + stride_c_kv, mask=ld_ok, other=0.0)                  # [N, D]
        return _softmax_step(q, tl.trans(k), v, n_ok[None, :], m_i, l_i, acc, scale_log2, IEEE)

    @triton.jit
    def _new_step(i0, new_hi, q_start, jq, q, m_i, l_i, acc, k_h, v_h, scale_log2,
                  stride_knt, stride_knd, stride_vnt, stride_vnd, offs_n, offs_d, d_ok,
                  IEEE: tl.constexpr):
        """This step's tokens i0 .. i0 + BLOCK_N (< new_hi) of the request; row j sees i <= j."""
        ki = i0 + offs_n
        i_ok = ki < new_hi
        kt = (q_start + ki).to(tl.int64)
        k = tl.load(k_h + kt[None, :] * stride_knt + offs_d[:, None] * stride_knd,
                    mask=i_ok[None, :] & d_ok[:, None], other=0.0)              # [D, N]
        v = tl.load(v_h + kt[:, None] * stride_vnt + offs_d[None, :] * stride_vnd,
                    mask=i_ok[:, None] & d_ok[None, :], other=0.0)              # [N, D]
        keep = i_ok[None, :] & (ki[None, :] <= jq[:, None])
        return _softmax_step(q, k, v, keep, m_i, l_i, acc, scale_log2, IEEE)

    @triton.jit
    def _paged_attention_kernel(
        q_ptr, k_new_ptr, v_new_ptr, kv_ptr, block_tables_ptr, context_lens_ptr, qsl_ptr,
        tok_req_ptr, out_ptr, part_out_ptr, part_lse_ptr,
        scale_log2,  # softmax scale * log2(e): the kernel works in base 2
        T, R,
        stride_qt, stride_qh, stride_qd,
        stride_knt, stride_knh, stride_knd,
        stride_vnt, stride_vnh, stride_vnd,
        stride_c_kv, stride_c_blk, stride_c_off, stride_c_h, stride_c_d,
        stride_bt,
        stride_ot, stride_oh, stride_od,
        stride_ps, stride_pt, stride_ph,  # part_out [S, T, Hq, D] (d contiguous), lse [S, T, Hq]
        G: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
        PAGE_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_Q: tl.constexpr,
        BLOCK_N: tl.constexpr, NUM_SPLITS: tl.constexpr, IEEE: tl.constexpr,
        INTERPRET: tl.constexpr,
    ):
        pid = tl.program_id(0)
        kvh = tl.program_id(1)
        split = tl.program_id(2)

        offs_m = tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        offs_n = tl.arange(0, BLOCK_N)
        m_tok = offs_m // G                      # token of the tile this row belongs to
        q_head = kvh * G + offs_m % G            # its query head
        row_ok = offs_m < BLOCK_Q * G
        d_ok = offs_d < HEAD_DIM

        if NUM_SPLITS == 1:
            # Padding rows (token_req_idx == -1) get zeros. Programs 0 .. T // BLOCK_Q cover all
            # rows (the grid has at least that many since R >= 1).
            zt = pid * BLOCK_Q + m_tok
            z_in = row_ok & (zt < T)
            z_req = tl.load(tok_req_ptr + zt, mask=z_in, other=0)
            z_ok = z_in & (z_req < 0)
            tl.store(out_ptr + zt.to(tl.int64)[:, None] * stride_ot + q_head[:, None] * stride_oh
                     + offs_d[None, :] * stride_od,
                     tl.zeros([BLOCK_M, BLOCK_D], dtype=out_ptr.dtype.element_ty),
                     mask=z_ok[:, None] & d_ok[None, :])

        # Request of this tile: the largest r with query_start_loc[r] // BLOCK_Q + r <= pid.
        lo = pid * 0
        hi = R - 1 + pid * 0
        while lo < hi:
            mid = (lo + hi + 1) // 2
            start_mid = tl.load(qsl_ptr + mid) // BLOCK_Q + mid
            ok = start_mid <= pid
            lo = tl.where(ok, mid, lo)
            hi = tl.where(ok, hi, mid - 1)
        r = lo
        q_start = tl.load(qsl_ptr + r)
        q_len = tl.load(qsl_ptr + r + 1) - q_start
        j0 = (pid - (q_start // BLOCK_Q + r)) * BLOCK_Q   # first query index (in request) of tile
        has_work = j0 < q_len
        ctx_len = tl.where(has_work, tl.load(context_lens_ptr + r), 0)

        jq = j0 + m_tok                          # query index within the request, per row
        valid = row_ok & (jq < q_len)
        t = (q_start + jq).to(tl.int64)
        q = tl.load(q_ptr + t[:, None] * stride_qt + q_head[:, None] * stride_qh
                    + offs_d[None, :] * stride_qd, mask=valid[:, None] & d_ok[None, :], other=0.0)

        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

        # ---- cached context: positions [c_lo, c_hi) of this split ----
        if NUM_SPLITS == 1:
            c_lo = ctx_len * 0
            c_hi = ctx_len
        else:
            chunk = tl.cdiv(tl.cdiv(ctx_len, NUM_SPLITS), BLOCK_N) * BLOCK_N
            c_lo = split * chunk
            c_hi = tl.minimum(ctx_len, c_lo + chunk)
        bt_row = block_tables_ptr + r.to(tl.int64) * stride_bt
        kv_h = kv_ptr + kvh.to(tl.int64) * stride_c_h
        # Runtime-bounded loops: `for range` on the GPU (software-pipelined); `while` under the
        # interpreter, whose range() cannot take the 1-element arrays it uses for scalars.
        if INTERPRET:
            n0 = c_lo
            while n0 < c_hi:
                m_i, l_i, acc = _ctx_step(n0, c_hi, q, m_i, l_i, acc, bt_row, kv_h, scale_log2,
                                          stride_c_kv, stride_c_blk, stride_c_off, stride_c_d,
                                          offs_n, offs_d, d_ok, PAGE_SIZE, IEEE)
                n0 += BLOCK_N
        else:
            for n0 in range(c_lo, c_hi, BLOCK_N):
                m_i, l_i, acc = _ctx_step(n0, c_hi, q, m_i, l_i, acc, bt_row, kv_h, scale_log2,
                                          stride_c_kv, stride_c_blk, stride_c_off, stride_c_d,
                                          offs_n, offs_d, d_ok, PAGE_SIZE, IEEE)

        # ---- this step's tokens 0 .. j (causal), handled by the last split ----
        new_hi = tl.minimum(q_len, j0 + BLOCK_Q)
        new_hi = tl.where(has_work & (split == NUM_SPLITS - 1), new_hi, 0)
        k_h = k_new_ptr + kvh.to(tl.int64) * stride_knh
        v_h = v_new_ptr + kvh.to(tl.int64) * stride_vnh
        if INTERPRET:
            i0 = new_hi * 0
            while i0 < new_hi:
                m_i, l_i, acc = _new_step(i0, new_hi, q_start, jq, q, m_i, l_i, acc, k_h, v_h,
                                          scale_log2, stride_knt, stride_knd, stride_vnt,
                                          stride_vnd, offs_n, offs_d, d_ok, IEEE)
                i0 += BLOCK_N
        else:
            for i0 in range(0, new_hi, BLOCK_N):
                m_i, l_i, acc = _new_step(i0, new_hi, q_start, jq, q, m_i, l_i, acc, k_h, v_h,
                                          scale_log2, stride_knt, stride_knd, stride_vnt,
                                          stride_vnd, offs_n, offs_d, d_ok, IEEE)

        l_safe = tl.where(l_i > 0.0, l_i, 1.0)
        o = acc / l_safe[:, None]
        if NUM_SPLITS == 1:
            req = tl.load(tok_req_ptr + t, mask=valid, other=-1)
            st_ok = valid & (req >= 0)
            tl.store(out_ptr + t[:, None] * stride_ot + q_head[:, None] * stride_oh
                     + offs_d[None, :] * stride_od, o.to(out_ptr.dtype.element_ty),
                     mask=st_ok[:, None] & d_ok[None, :])
        else:
            lse = tl.where(l_i > 0.0, m_i + tl.log2(l_safe), float("-inf"))
            p_off = split.to(tl.int64) * stride_ps + t * stride_pt + q_head * stride_ph
            tl.store(part_lse_ptr + p_off, lse, mask=valid)
            tl.store(part_out_ptr + p_off[:, None] * HEAD_DIM + offs_d[None, :], o,
                     mask=valid[:, None] & d_ok[None, :])

    @triton.jit
    def _paged_attention_reduce_kernel(
        part_out_ptr, part_lse_ptr, tok_req_ptr, out_ptr,
        stride_ps, stride_pt, stride_ph,
        stride_ot, stride_oh, stride_od,
        NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr,
        BLOCK_D: tl.constexpr, NUM_SPLITS: tl.constexpr,
    ):
        # One program per token: merge the NUM_SPLITS partial softmaxes of its Hq heads.
        t = tl.program_id(0).to(tl.int64)
        offs_h = tl.arange(0, BLOCK_H)
        offs_d = tl.arange(0, BLOCK_D)
        h_ok = offs_h < NUM_HEADS
        hd_ok = h_ok[:, None] & (offs_d[None, :] < HEAD_DIM)
        is_real = tl.load(tok_req_ptr + t) >= 0
        ld_h = h_ok & is_real
        m = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
        for s in tl.static_range(NUM_SPLITS):
            lse = tl.load(part_lse_ptr + s * stride_ps + t * stride_pt + offs_h * stride_ph,
                          mask=ld_h, other=float("-inf"))
            m = tl.maximum(m, lse)
        m = tl.where(m == float("-inf"), 0.0, m)
        num = tl.zeros([BLOCK_H, BLOCK_D], dtype=tl.float32)
        den = tl.zeros([BLOCK_H], dtype=tl.float32)
        for s in tl.static_range(NUM_SPLITS):
            p_off = s * stride_ps + t * stride_pt + offs_h * stride_ph
            lse = tl.load(part_lse_ptr + p_off, mask=ld_h, other=float("-inf"))
            w = tl.exp2(lse - m)
            o = tl.load(part_out_ptr + p_off[:, None] * HEAD_DIM + offs_d[None, :],
                        mask=hd_ok & ld_h[:, None], other=0.0)
            num += w[:, None] * o
            den += w
        out = num / tl.where(den > 0.0, den, 1.0)[:, None]   # padding rows: 0 / 1 = 0
        tl.store(out_ptr + t * stride_ot + offs_h[:, None] * stride_oh
                 + offs_d[None, :] * stride_od, out.to(out_ptr.dtype.element_ty), mask=hd_ok)


@functools.lru_cache(maxsize=None)
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def paged_attention(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor,
                    kv_cache_layer: torch.Tensor, block_tables: torch.Tensor,
                    context_lens: torch.Tensor, query_start_loc: torch.Tensor,
                    token_req_idx: torch.Tensor, scale: float,
                    out: Optional[torch.Tensor] = None, force_triton: bool = False,
                    num_splits: Optional[int] = None) -> torch.Tensor:
    """q [T, Hq, D], k_new / v_new [T, Hkv, D] (any strides), kv_cache_layer [2, NB, BS, Hkv, D],
    block_tables [R, max_blocks] int32, context_lens [R] int32, query_start_loc [R + 1] int32,
    token_req_idx [T] int32 (-1 = padding) -> out [T, Hq, D].

    CUDA: one kernel launch (two with context splits), no host sync: CUDA-graph capturable.
    ``force_triton`` runs the kernel on CPU tensors through the Triton interpreter (tests);
    ``num_splits`` overrides the context split count (tests)."""
    if not kernel_enabled(q.device, force_triton):
        return paged_attention_ref(q, k_new, v_new, kv_cache_layer, block_tables, context_lens,
                                   query_start_loc, token_req_idx, scale, out=out)
    T, Hq, D = q.shape
    Hkv = k_new.shape[1]
    G = Hq // Hkv
    R = block_tables.shape[0]
    if out is None:
        out = torch.empty((T, Hq, D), dtype=q.dtype, device=q.device)
    if T == 0:
        return out
    if R == 0:
        return out.zero_()
    page = kv_cache_layer.shape[2]
    max_ctx = block_tables.shape[1] * page
    # Rows of a tile = (query token, q head of the group) pairs. Decode / verify batches get
    # 16-32 rows; prefill-like batches (many tokens per request) up to 128 rows for K/V reuse.
    # fp32 (tests) stays small: its tiles spill registers. Gathered K/V loads need one address
    # per element, hence the small BLOCK_N at head_dim 128 (checked: no spills on sm_90).
    max_m = 32 if q.dtype == torch.float32 else 128
    block_m = max(16, triton.next_power_of_2(G))
    per_req = -(-T // max(R, 1))
    while block_m < max_m and block_m < per_req * G:
        block_m *= 2
    block_q = block_m // G
    if D >= 128:
        block_n, num_warps = 32, 8
    else:
        block_n, num_warps = (64, 8) if block_m >= 64 else (32, 4)
    tiles = T // block_q + R
    if num_splits is None:
        num_splits = 1
        if q.device.type == "cuda" and max_ctx >= 1024:
            sms = _num_sms(q.device.index if q.device.index is not None
                           else torch.cuda.current_device())
            progs = tiles * Hkv
            if progs < sms:
                # Enough programs to fill the GPU ~2x, at least 256 positions per split.
                num_splits = max(1, min(16, -(-2 * sms // progs), max_ctx // 256))
    is_ieee = q.dtype == torch.float32
    if num_splits > 1:
        part_out = torch.empty((num_splits, T, Hq, D), dtype=torch.float32, device=q.device)
        part_lse = torch.empty((num_splits, T, Hq), dtype=torch.float32, device=q.device)
        p_strides = part_lse.stride()
    else:
        part_out = part_lse = out  # unused
        p_strides = (0, 0, 0)
    kernel = kernel_for(_paged_attention_kernel, q.device)
    kernel[(tiles, Hkv, num_splits)](
        q, k_new, v_new, kv_cache_layer, block_tables, context_lens, query_start_loc,
        token_req_idx, out, part_out, part_lse,
        scale * 1.4426950408889634, T, R,
        *q.stride(), *k_new.stride(), *v_new.stride(), *kv_cache_layer.stride(),
        block_tables.stride(0), *out.stride(), *p_strides,
        G=G, HEAD_DIM=D, BLOCK_D=max(16, triton.next_power_of_2(D)), PAGE_SIZE=page,
        BLOCK_M=block_m, BLOCK_Q=block_q, BLOCK_N=block_n, NUM_SPLITS=num_splits,
        IEEE=is_ieee, INTERPRET=q.device.type != "cuda", num_warps=num_warps,
    )
    if num_splits > 1:
        reduce = kernel_for(_paged_attention_reduce_kernel, q.device)
        reduce[(T,)](
            part_out, part_lse, token_req_idx, out, *p_strides, *out.stride(),
            NUM_HEADS=Hq, HEAD_DIM=D, BLOCK_H=triton.next_power_of_2(Hq),
            BLOCK_D=triton.next_power_of_2(D), NUM_SPLITS=num_splits, num_warps=4,
        )
    return out


# ----------------------------------------------------------------------------------------------
# Reference (plain torch). Two strategies with identical results: all requests at once, padded to
# the longest query / context (cheap for decode and verify batches), or a loop over requests with
# SDPA (prefill batches, where padding every request to the longest prompt would waste).
# ----------------------------------------------------------------------------------------------

def paged_attention_ref(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor,
                        kv_cache_layer: torch.Tensor, block_tables: torch.Tensor,
                        context_lens: torch.Tensor, query_start_loc: torch.Tensor,
                        token_req_idx: torch.Tensor, scale: float,
                        out: Optional[torch.Tensor] = None,
                        strategy: Optional[str] = None) -> torch.Tensor:
    """Same contract as paged_attention. strategy: None (pick by shape), "batched" or "loop"
    (tests force each). Reads lengths on the host (a sync on CUDA: not graph-capturable)."""
    T, Hq, D = q.shape
    res = torch.zeros((T, Hq, D), dtype=q.dtype, device=q.device)
    if T > 0:
        qsl = query_start_loc.tolist()
        ctx = context_lens.tolist()
        reqs = [r for r in range(len(qsl) - 1) if qsl[r + 1] > qsl[r]]
        if reqs:
            if strategy is None:
                # Batched wins for several short queries (decode / verify) of similar context
                # lengths; the loop (SDPA per request) for prefill and very uneven contexts.
                q_lens = [qsl[r + 1] - qsl[r] for r in reqs]
                padded = len(reqs) * (max(ctx[r] for r in reqs) + max(q_lens))
                real = sum(ctx[r] + n for r, n in zip(reqs, q_lens))
                batched = len(reqs) > 1 and max(q_lens) <= 16 and padded <= 2 * real + 1024
                strategy = "batched" if batched else "loop"
            fn = _ref_batched if strategy == "batched" else _ref_loop
            fn(res, q, k_new, v_new, kv_cache_layer, block_tables, qsl, ctx, reqs, scale)
        res[token_req_idx < 0] = 0
    if out is None:
        return res
    out.copy_(res)
    return out


def _gather_context(kv_cache_layer: torch.Tensor, block_row: torch.Tensor, n: int):
    """First n cached positions of one request -> K, V [n, Hkv, D]."""
    page = kv_cache_layer.shape[2]
    nb = -(-n // page)
    blocks = block_row[:nb].long()
    kv = kv_cache_layer[:, blocks]                     # [2, nb, page, Hkv, D]
    kv = kv.reshape(2, nb * page, *kv.shape[3:])[:, :n]
    return kv[0], kv[1]


def _ref_loop(res, q, k_new, v_new, kv_cache_layer, block_tables, qsl, ctx, reqs, scale):
    Hq, Hkv = q.shape[1], k_new.shape[1]
    for r in reqs:
        s, e, c = qsl[r], qsl[r + 1], ctx[r]
        n = e - s
        kc, vc = _gather_context(kv_cache_layer, block_tables[r], c)
        k = torch.cat([kc.to(q.dtype), k_new[s:e].to(q.dtype)], 0)   # [c + n, Hkv, D]
        v = torch.cat([vc.to(q.dtype), v_new[s:e].to(q.dtype)], 0)
        # Query j sees keys 0 .. c + j (causal with an offset of c).
        mask = None
        if n > 1:
            mask = (torch.arange(c + n, device=q.device)[None, :]
                    <= c + torch.arange(n, device=q.device)[:, None])
        o = F.scaled_dot_product_attention(
            q[s:e].transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask,
            scale=scale, enable_gqa=Hq != Hkv)               # [Hq, n, D]
        res[s:e] = o.transpose(0, 1)


def _ref_batched(res, q, k_new, v_new, kv_cache_layer, block_tables, qsl, ctx, reqs, scale):
    """All requests at once, padded to the longest query (max_q) and context (whole pages).
    Scores of context and new keys are computed separately and concatenated (cheaper than
    concatenating K/V); GQA groups ride in the row dimension: rows = (query, head of group)."""
    dev = q.device
    T, Hq, D = q.shape
    Hkv = k_new.shape[1]
    G = Hq // Hkv
    page = kv_cache_layer.shape[2]
    B = len(reqs)
    q_lens = [qsl[r + 1] - qsl[r] for r in reqs]
    max_q = max(q_lens)
    nb = max(-(-ctx[r] // page) for r in reqs)
    starts = torch.tensor([qsl[r] for r in reqs], device=dev)
    q_len_t = torch.tensor(q_lens, device=dev)
    c_len_t = torch.tensor([ctx[r] for r in reqs], device=dev)

    j = torch.arange(max_q, device=dev)
    q_valid = j[None, :] < q_len_t[:, None]                                 # [B, max_q]
    tok = (starts[:, None] + j[None, :]).clamp(max=T - 1)                   # [B, max_q]
    # [B, max_q, Hkv, G, D] -> [B, Hkv, max_q * G, D]
    qg = q[tok].view(B, max_q, Hkv, G, D).permute(0, 2, 1, 3, 4).reshape(B, Hkv, max_q * G, D)
    kn = k_new[tok].to(q.dtype).permute(0, 2, 1, 3)                         # [B, Hkv, max_q, D]
    vn = v_new[tok].to(q.dtype).permute(0, 2, 1, 3)

    # Whole pages of context, K and V in one gather: [2, B, nb * page, Hkv, D].
    bt = block_tables[torch.tensor(reqs, device=dev)][:, :nb].long()
    bt = bt.clamp(0, kv_cache_layer.shape[1] - 1)      # entries past a request's context
    kvc = kv_cache_layer[:, bt].reshape(2, B, nb * page, Hkv, D).to(q.dtype)
    Lc = nb * page
    pos = torch.arange(Lc, device=dev)
    row_j = torch.arange(max_q * G, device=dev) // G                        # query of each row
    ok_ctx = (pos[None, :] < c_len_t[:, None])[:, None, :]                  # [B, 1, Lc]
    ok_new = (j[None, :] <= row_j[:, None])[None]                           # [1, M, max_q]
    o = torch.empty(B, Hkv, max_q * G, D, dtype=q.dtype, device=dev)
    # One kv head at a time: K/V slices [B, L, D] are strided views that bmm takes without a copy.
    for h in range(Hkv):
        s_ctx = torch.bmm(qg[:, h], kvc[0, :, :, h].transpose(1, 2))        # [B, M, Lc]
        s_new = torch.bmm(qg[:, h], kn[:, h].transpose(1, 2))               # [B, M, max_q]
        s = torch.cat([s_ctx.masked_fill_(~ok_ctx, float("-inf")),
                       s_new.masked_fill_(~ok_new, float("-inf"))], -1)
        p = torch.softmax(s.float() * scale, -1).to(q.dtype)
        o[:, h] = torch.bmm(p[..., :Lc], kvc[1, :, :, h]) + torch.bmm(p[..., Lc:], vn[:, h])
    o = o.view(B, Hkv, max_q, G, D).permute(0, 2, 1, 3, 4).reshape(B, max_q, Hq, D)
    res[tok[q_valid]] = o[q_valid]
