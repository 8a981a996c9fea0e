#!/usr/bin/env python3
"""The 8-bit P·V paths' error by K-scale granularity: a CPU model (numpy), no GPU.

Replays the Hopper 8-bit kernels' quantization steps in float64 on N(0,1)-style inputs and prints
rel L1 against float64 attention for three layouts of K's INT8 scales:

* `block64`: one scale per 64 keys (today's contract, docs/design.md "Quantization");
* `thread`: the official SageAttention2 layout, four scales per 128-key tile, each over the 32
  keys one lane of a quad holds in the accumulator (key % 8 // 2), so a thread needs one per tile;
* `block128`: one scale per 128-key tile (the cheapest, for reference).

The steps: Q per token INT8 with `sm_scale · log2 e` folded in; K smoothed by its mean over the
sequence; scores in log2 units; per 128-key tile, P = 2^(s - tile max) scaled to e4m3 (×448,
round to nearest even, `PvPrecision::Fp8`) or u8 (×255, `PvPrecision::Int8`); V smoothed by its
channel mean and quantized per channel (e4m3 with the channel's largest |v| at 1, or INT8);
each tile's product exact, folded into the output against the running max; row sums from the
unrounded P. It reproduces the measured figures within a few percent (compare.sh: FP8 0.035–0.037,
Int8 0.015, QK channels ×20 0.039 / 0.027).

    python3 scripts/k-scale-model.py [--seq 2048] [--heads 4] [--seed 7]
"""

import argparse

import numpy as np


def e4m3(x):
    """Round to the nearest e4m3 value (ties to even), saturating at ±448."""
    a = np.abs(x)
    e = np.maximum(np.floor(np.log2(np.maximum(a, 1e-30))), -6)
    step = 2.0 ** (e - 3)
    return np.sign(x) * np.minimum(np.round(a / step) * step, 448.0)


def quantize_groups(x, groups):
    """INT8 of the rows of x with one scale per group label; returns (values, scale per row)."""
    out = np.empty_like(x)
    scale = np.empty(x.shape[0])
    for g in np.unique(groups):
        rows = groups == g
        amax = np.abs(x[rows]).max()
        inv = 127.0 / amax if amax > 0 else 0.0
        out[rows] = np.clip(np.round(x[rows] * inv), -127, 127)
        scale[rows] = amax / 127.0
    return out, scale


def k_groups(n, layout, tile):
    keys = np.arange(n)
    if layout == "block64":
        return keys // 64
    if layout == "thread":
        return (keys // tile) * 4 + (keys % 8) // 2
    return keys // tile


def attention_8bit(q, k, v, layout, pv, tile=128):
    n, d = q.shape
    qs = q * (np.log2(np.e) / np.sqrt(d))
    sq = np.abs(qs).max(axis=1) / 127.0
    qi = np.clip(np.round(qs / sq[:, None]), -127, 127)
    ki, sk = quantize_groups(k - k.mean(axis=0), k_groups(n, layout, tile))
    s = (qi @ ki.T) * sq[:, None] * sk[None, :]
    v_mean = v.mean(axis=0)
    amax = np.abs(v - v_mean).max(axis=0)
    if pv == "fp8":
        v8, v_scale, p_max = e4m3((v - v_mean) / amax), amax, 448.0
    else:
        v8 = np.clip(np.round((v - v_mean) * 127.0 / amax), -127, 127)
        v_scale, p_max = amax / 127.0, 255.0
    m, l, o = np.full(n, -np.inf), np.zeros(n), np.zeros((n, d))
    for t0 in range(0, n, tile):
        st = s[:, t0:t0 + tile]
        mt = st.max(axis=1)
        p = 2.0 ** (st - mt[:, None])
        pq = e4m3(p * p_max) if pv == "fp8" else np.round(p * p_max)
        new_m = np.maximum(m, mt)
        o = o * 2.0 ** (m - new_m)[:, None] + (pq @ v8[t0:t0 + tile]) * 2.0 ** (mt - new_m)[:, None]
        l = l * 2.0 ** (m - new_m) + p.sum(axis=1) * p_max * 2.0 ** (mt - new_m)
        m = new_m
    return o / l[:, None] * v_scale[None, :] + v_mean[None, :]


def attention_exact(q, k, v):
    s = q @ k.T / np.sqrt(q.shape[1])
    p = np.exp(s - s.max(axis=1, keepdims=True))
    return (p / p.sum(axis=1, keepdims=True)) @ v


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    layouts, pvs = ("block64", "thread", "block128"), ("fp8", "int8")
    print(f"rel L1 against float64, N = {args.seq}, mean over {args.heads} heads, seed {args.seed}")
    print(f"{'d':>3}  {'input':<12}" + "".join(f"{l + '/' + p:>16}" for l in layouts for p in pvs))
    for d in (64, 128):
        for name in ("N(0,1)", "K+8 offsets", "QK ch x20"):
            err = {}
            for _ in range(args.heads):
                q, k, v = (rng.standard_normal((args.seq, d)) for _ in range(3))
                if name == "K+8 offsets":
                    k += 8 * rng.standard_normal(d)
                if name == "QK ch x20":
                    ch = rng.choice(d, 4, replace=False)
                    q[:, ch] *= 20
                    k[:, ch] *= 20
                ref = attention_exact(q, k, v)
                for layout in layouts:
                    for pv in pvs:
                        o = attention_8bit(q, k, v, layout, pv)
                        err.setdefault((layout, pv), []).append(
                            np.abs(o - ref).sum() / np.abs(ref).sum())
            print(f"{d:>3}  {name:<12}"
                  + "".join(f"{np.mean(err[(l, p)]):>16.4f}" for l in layouts for p in pvs),
                  flush=True)


if __name__ == "__main__":
    main()
