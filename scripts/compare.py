#!/usr/bin/env python3
"""Compares our SageAttention with its peers on the GPU, in one run, and prints ONE table.

Runs on the GPU machine (see docs/bench.md; normally through scripts/compare.sh):

  1. peers, each timed the way our bench times (CUDA events around every call after a warm-up,
     median of >= --min-iters calls and >= --min-seconds of GPU time, capped by
     --max-seconds-per-case; N(0,1) inputs rotated over enough sets to exceed twice the L2):
       sdpa-flash         torch SDPA, FlashAttention backend      (SDPBackend.FLASH_ATTENTION)
       sdpa-cudnn         torch SDPA, cuDNN backend               (SDPBackend.CUDNN_ATTENTION)
       sage-1.0.6         official SageAttention 1.0.6 (Triton), sageattn(): smoothing +
                          quantization + attention
       sage-1.0.6-kernel  its attention kernel alone on inputs quantized beforehand
       sage-2.2-sm90      official SageAttention 2.2, sageattn_qk_int8_pv_fp8_cuda_sm90()
                          (INT8 QK, FP8 PV, Hopper): the whole call
       sage-2.2-sm90-kernel  its attention kernel alone on inputs it prepared beforehand
     The sage-2.2 peers run in a second Python process (the "sage2 worker": both versions are
     the package `sageattention`), which imports the build compare.sh made from the carried
     sources ($SAGE2_DIR); they are in the default peers only when compare.sh set $SAGE2_DIR
     (or $SAGE2_ERROR, when that build failed).
     -> $OUT/peers.json
  2. accuracy: for d=64 and d=128, N=2048, B=1, H=8 (kv heads as --kv-heads scales), N(0,1)
     inputs, and K with a +8*N(0,1) per-channel offset, causal off and on; then (causal off) the
     hard inputs: 4 channels x20 in Q and K, Q x6, Q x40: rel L1 and cosine similarity against a
     float64 reference computed with torch on the GPU, for every peer and for ours (our outputs
     come from `bench --accuracy-file`, once per P.V precision: columns ours, ours-int8,
     ours-fp8)
  3. our bench on the same shapes (`bench --json --peers --plot`) -> $OUT/ours.json, chart.svg:
     columns "ours kernel", "ours full", ratios "ours/<peer>"; with the 8-bit P.V
     (--ours-int8, on by default on compute capability 9.0) once more with `--pv-precision int8`
     -> $OUT/ours-int8.json, chart-int8.svg: columns "ours int8 kernel", "ours int8 full",
     ratios "int8/<peer>"; with the FP8 P.V (--ours-fp8, the same default) with
     `--pv-precision fp8` -> $OUT/ours-fp8.json, chart-fp8.svg: "ours fp8 kernel", "ours fp8
     full", "fp8/<peer>" (a ratio is our full call / the peer, our kernel / a -kernel peer)
  4. varlen (--varlen on, the default; `only` runs nothing else): packed sequences timed in this
     one process on the same inputs, for d=128 (--varlen-head-dims), causal off and on: a mix of
     16 lengths drawn (seeded) from 128..8192, and the same number of equal lengths (the mix's
     mean): our `sageattn_varlen` through our wheel (compare.sh installs it from .device/wheels
     into $SAGE_RS_SITE; imported as `sageattention_rs`, both packages being `sageattention`),
     with the prefix sums on the GPU and on the host, and (as --ours-int8 / --ours-fp8 say) on
     the GPU with pv_precision="int8" / "fp8" (ours-int8, ours-fp8); the official SageAttention
     1.0.6 `sageattn_varlen` (Triton, the same package as above); PyTorch SDPA's flash backend on
     nested (jagged) tensors when torch runs them, else one call per sequence (the table says
     which). Ratios: ours/, int8/, fp8/ flash and sage (TOPS / TOPS). Accuracy: rel L1 against
     SDPA's output on the same inputs.
  5. the table -> stdout and $OUT/table.txt; everything -> $OUT/compare.json (ours, ours_int8,
     ours_fp8, peers, accuracy, varlen)

A peer that fails (import error, unsupported shape, out of memory) shows `failed` in its column
and the reasons are listed under the table; the run goes on.

Needs torch (with CUDA), triton, numpy, safetensors; the official SageAttention 1.0.6 is imported
from the wheel compare.sh installs (pure Python), 2.2 from its build. `python3 compare.py
--selftest` checks the pure parts (table, statistics, merging) without torch or a GPU.
"""

import argparse
import contextlib
import json
import math
import os
import random
import shlex
import subprocess
import sys
import time
import traceback

SAGE2_PEERS = ["sage-2.2-sm90", "sage-2.2-sm90-kernel"]
PEERS = ["sdpa-flash", "sdpa-cudnn", "sage-1.0.6", "sage-1.0.6-kernel"] + SAGE2_PEERS
SHORT = {
    "sdpa-flash": "flash",
    "sdpa-cudnn": "cudnn",
    "sage-1.0.6": "sage",
    "sage-1.0.6-kernel": "sage-kern",
    "sage-2.2-sm90": "sage2",
    "sage-2.2-sm90-kernel": "sage2-kern",
}
# Our result sets beyond the default f16 P.V, in the table's order: the bench's --pv-precision
# (and the wheel's pv_precision) -> the header line that says what its columns are. Each has its
# flag --ours-<pv>, its columns "ours <pv> kernel/full", ratios "<pv>/<peer>", accuracy key
# "ours-<pv>", report ours-<pv>.json and varlen peer "ours-<pv>".
OURS_PV = {
    "int8": "ours int8 = the same with --pv-precision int8 (8-bit P.V: u8 P x s8 V on the INT8 "
            "tensor cores; V quantized in the full call); int8/X = ours int8 full / X "
            "(ours int8 kernel / X for a -kernel peer)",
    "fp8": "ours fp8 = the same with --pv-precision fp8 (e4m3 P x e4m3 V on the FP8 tensor cores, "
           "each 128-key tile's product accumulated in f32 then added to the output, the official "
           "2.2's algorithm; V quantized in the full call); fp8/X = ours fp8 full / X "
           "(ours fp8 kernel / X for a -kernel peer)",
}
# Accuracy inputs beyond N(0,1) and the K offset, causal off only (issue 9's hard inputs).
HARD_KINDS = ["QK ch x20", "Q x6", "Q x40"]
MIN_SAMPLES = 3
IN_SAGE2_WORKER = False
MAX_BATCH = 256
BATCH_SECONDS = 0.1
STARTED = time.time()


def log(msg):
    t = int(time.time() - STARTED)
    print(f"[compare {t // 60:2d}m{t % 60:02d}s] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# Pure helpers (same rules as benches/bench/stats.rs)
# ----------------------------------------------------------------------------------------------


def parse_len(s):
    s = s.strip()
    mult = 1
    if s[-1:] in ("k", "K"):
        s, mult = s[:-1], 1024
    elif s[-1:] in ("m", "M"):
        s, mult = s[:-1], 1024 * 1024
    n = int(s) * mult
    if n <= 0:
        raise ValueError(f"length must be positive: {s}")
    return n


def seq_label(n):
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return f"{n >> 20}M"
    if n >= 1024 and n % 1024 == 0:
        return f"{n >> 10}K"
    return str(n)


def percentile(sorted_vals, p):
    if not sorted_vals:
        return None
    rank = max(0.0, min(100.0, p)) / 100.0 * (len(sorted_vals) - 1)
    lo, hi = math.floor(rank), math.ceil(rank)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (rank - lo)


def summarize(samples):
    s = sorted(x for x in samples if math.isfinite(x))
    if not s:
        return None
    return {
        "iters": len(s),
        "median_ms": percentile(s, 50),
        "min_ms": s[0],
        "max_ms": s[-1],
        "mean_ms": sum(s) / len(s),
        "p10_ms": percentile(s, 10),
        "p90_ms": percentile(s, 90),
    }


def attention_flops(batch, heads, seq_q, seq_kv, head_dim, causal):
    f = 4.0 * batch * heads * seq_q * seq_kv * head_dim
    return f / 2 if causal else f


def tops(flops, ms):
    return flops / (ms * 1e-3) / 1e12 if ms and ms > 0 and math.isfinite(ms) else 0.0


def rotation_sets(set_bytes, l2_bytes, max_sets):
    max_sets = max(1, max_sets)
    if set_bytes <= 0:
        return max_sets
    return max(1, min(max_sets, -(-2 * l2_bytes // set_bytes)))


def next_batch(est_s, done, gpu_s, wall_s, a):
    est = max(est_s, 1e-6)
    target = math.ceil(BATCH_SECONDS / est)
    need = max(a.min_iters - done, math.ceil(max(0.0, a.min_seconds - gpu_s) / est),
               MIN_SAMPLES - done, 1)
    fit = math.ceil(max(0.0, a.max_seconds_per_case - wall_s) / est)
    return max(1, min(target, need, max(fit, MIN_SAMPLES - done), MAX_BATCH))


def should_stop(done, gpu_s, wall_s, a):
    return (done >= a.min_iters and gpu_s >= a.min_seconds) or (
        wall_s >= a.max_seconds_per_case and done >= MIN_SAMPLES)


def first_line(e):
    text = f"{type(e).__name__}: {e}".strip()
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:240]
    return type(e).__name__


# ----------------------------------------------------------------------------------------------
# The table (pure: works on the JSON of the bench and of the peers)
# ----------------------------------------------------------------------------------------------


def align(header, rows, left):
    """Aligned text table; a row of a single cell is a note spanning the table (not aligned)."""
    width = [len(h) for h in header]
    for r in rows:
        if len(r) == 1:
            continue
        for i, c in enumerate(r[: len(header)]):
            width[i] = max(width[i], len(c))

    def line(cells):
        out = []
        for i, w in enumerate(width):
            c = cells[i] if i < len(cells) else ""
            out.append(c.ljust(w) if i < left else c.rjust(w))
        return "  ".join(out).rstrip()

    lines = [line(header), line(["-" * w for w in width])]
    lines += [line(r) if len(r) > 1 else (r[0] if r else "") for r in rows]
    return "\n".join(lines) + "\n"


def case_key(c):
    return (c["head_dim"], bool(c["causal"]), c["seq_len"], c["batch"], c["heads"],
            c.get("kv_heads", c["heads"]))


def fmt_tops(t):
    return f"{t:.1f}" if t is not None and math.isfinite(t) else "-"


def fmt_acc(m):
    if not m:
        return "-"
    if "error" in m:
        return "failed"
    return f"{m['rel_l1']:.2e} / {m['cos_sim']:.5f}"


def our_variants(ours, extra):
    """Our result sets: (column label, bench report, ratio prefix, accuracy metrics key). Those of
    OURS_PV are there when `extra` (P.V precision -> bench report) has one that is not None (an
    empty dict: asked for, but the bench gave nothing)."""
    v = [("ours", ours, "ours", "ours")]
    for pv in OURS_PV:
        if (extra or {}).get(pv) is not None:
            v.append((f"ours {pv}", extra[pv], pv, f"ours-{pv}"))
    return v


def render_table(ours, peers, accuracy, extra=None):
    """ONE table: performance rows (TOPS; ratios ours / peer, and for each result set of `extra`
    (P.V precision -> bench report), <pv> / peer), then accuracy rows (rel L1 / cos sim against
    float64). Returns (text, notes)."""
    names = list(peers.get("peers", [])) if peers else []
    peer_cases = {case_key(c): c.get("results", {}) for c in (peers or {}).get("cases", [])}
    variants = our_variants(ours, extra)
    header = ["case"] + names
    for label, _, _, _ in variants:
        header += [f"{label} kernel", f"{label} full"]
    for _, _, prefix, _ in variants:
        header += [f"{prefix}/{SHORT.get(n, n)}" for n in names]
    rows = []
    failures = {}
    by_key = []
    keys = set(peer_cases)
    for _, report, _, _ in variants:
        cases = {case_key(c): c for c in (report or {}).get("cases", [])}
        by_key.append(cases)
        keys |= set(cases)
    last_group = None
    for k in sorted(keys):
        d, causal, n, b, h, hk = k
        if last_group is not None and last_group != (d, causal):
            rows.append([])
        last_group = (d, causal)
        gqa = f" kv{hk}" if hk != h else ""
        row = [f"d={d} causal={'on' if causal else 'off'} N={seq_label(n)}{gqa}"]
        res = peer_cases.get(k, {})
        peer_tops = {}
        for name in names:
            r = res.get(name)
            if r is None:
                row.append("-")
            elif "error" in r:
                row.append("failed")
                failures.setdefault(name, {}).setdefault(r["error"], []).append(row[0])
            else:
                peer_tops[name] = r.get("tops")
                row.append(fmt_tops(r.get("tops")))
        mine = []
        for (label, _, _, _), cases in zip(variants, by_key):
            c = cases.get(k)
            kern = (c or {}).get("kernel") or {}
            full = (c or {}).get("full") or {}
            if c is not None and c.get("skipped"):
                row += ["skipped", "skipped"]
                failures.setdefault(label, {}).setdefault(c["skipped"], []).append(row[0])
            else:
                row += [fmt_tops(kern.get("tops")), fmt_tops(full.get("tops"))]
            mine.append((kern.get("tops"), full.get("tops")))
        for kern_tops, full_tops in mine:
            for name in names:
                t = kern_tops if name.endswith("-kernel") else full_tops
                theirs = peer_tops.get(name)
                row.append(f"{t / theirs:.2f}x" if t and theirs else "")
        rows.append(row)
    if accuracy:
        rows.append([])
        a0 = accuracy[0]
        b, h, n, _ = a0.get("shape", [1, 8, 2048, 0])
        hk = a0.get("kv_heads", h)
        rows.append([f"accuracy, B={b} H={h}{'' if hk == h else f' kv_heads={hk}'} N={n}: "
                     "rel L1 / cos sim vs float64"])
        for a in accuracy:
            row = [a["case"]]
            for name in names:
                m = a["metrics"].get(name)
                row.append(fmt_acc(m))
                if m and "error" in m:
                    failures.setdefault(name, {}).setdefault(m["error"], []).append(a["case"])
            for label, _, _, key in variants:
                m = a["metrics"].get(key)
                row += ["", fmt_acc(m)]
                if m and "error" in m:
                    failures.setdefault(label, {}).setdefault(m["error"], []).append(a["case"])
            rows.append(row)
    text = align(header, rows, 1)
    notes = []
    for name, errs in failures.items():
        for err, cases in errs.items():
            more = f" (+{len(cases) - 3} more)" if len(cases) > 3 else ""
            notes.append(f"{name} failed on {len(cases)} case(s) [{', '.join(cases[:3])}{more}]: {err}")
    return text, notes


def header_lines(ours, peers, extra=None):
    lines = []
    reports = [r or {} for r in [ours] + [(extra or {}).get(pv) for pv in OURS_PV]]
    dev = next((r["device"] for r in reports if r.get("device")), {})
    pdev = (peers or {}).get("device") or {}
    name = dev.get("name") or pdev.get("name") or "unknown GPU"
    lines.append(
        f"GPU: {name} ({dev.get('sm_count', pdev.get('sm_count', '?'))} SMs, "
        f"L2 {((dev.get('l2_bytes') or pdev.get('l2_bytes') or 0) / 2**20):.0f} MiB); "
        f"torch {pdev.get('torch', '?')}, triton {pdev.get('triton', '?')}, "
        f"cuDNN {pdev.get('cudnn', '?')}")
    if any(p in SAGE2_PEERS for p in (peers or {}).get("peers", [])):
        lines.append(f"sage-2.2-sm90 = official SageAttention {pdev.get('sageattention2', '2.2 (?)')}"
                     ", sageattn_qk_int8_pv_fp8_cuda_sm90 (per-thread INT8 QK, FP8 PV, "
                     "fp32+fp32 accumulation, smooth_k), built on this machine; -kernel = its "
                     "attention kernel on inputs it prepared beforehand")
    cfg = next((r["config"] for r in reports if r.get("config")), None) or \
        (peers or {}).get("config") or {}
    if cfg:
        lines.append(
            f"shapes: batch {cfg.get('batch')}, heads {cfg.get('heads')}, kv_heads "
            f"{cfg.get('kv_heads')}, {cfg.get('dtype')} {str(cfg.get('layout', '')).upper()}; "
            f"TOPS = 4*B*H*N^2*d / median time (halved when causal)")
    lines.append(
        "ours kernel = attention kernel on pre-quantized inputs; ours full = sageattn_into "
        "(K mean + INT8 quantization + attention); ours/X = ours full / X "
        "(ours kernel / X for a -kernel peer)")
    lines += [line for pv, line in OURS_PV.items() if (extra or {}).get(pv) is not None]
    return lines


# ----------------------------------------------------------------------------------------------
# GPU parts (torch imported lazily so that --selftest runs anywhere)
# ----------------------------------------------------------------------------------------------


def torch_dtype(torch, name):
    return {"f16": torch.float16, "bf16": torch.bfloat16}[name]


def time_calls(torch, fn, a):
    """Warm-up, then CUDA events around every call; returns the times in ms and the least host
    time to queue one call on an idle stream (ms)."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    i = 0
    host = 0.0
    while True:
        t = time.perf_counter()
        fn(i)
        queued = time.perf_counter() - t
        torch.cuda.synchronize()
        last = time.perf_counter() - t
        # The first call may include one-time work (compilation): later calls replace it.
        host = queued * 1e3 if i <= 1 else min(host, queued * 1e3)
        i += 1
        if (time.perf_counter() - t0) * 1e3 >= a.warmup_ms:
            break
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(MAX_BATCH)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(MAX_BATCH)]
    samples, gpu_s, w0 = [], 0.0, time.perf_counter()
    while True:
        batch = next_batch(last, len(samples), gpu_s, time.perf_counter() - w0, a)
        for j in range(batch):
            starts[j].record()
            fn(i)
            ends[j].record()
            i += 1
        torch.cuda.synchronize()
        for j in range(batch):
            ms = starts[j].elapsed_time(ends[j])
            samples.append(ms)
            gpu_s += ms * 1e-3
        if should_stop(len(samples), gpu_s, time.perf_counter() - w0, a):
            return samples, host


def make_sets(torch, shape, kv_heads, sets, dtype, layout, seed):
    b, h, n, d = shape
    g = torch.Generator(device="cuda")
    g.manual_seed(seed)
    out = []
    for _ in range(sets):
        def rnd(heads):
            dims = (b, heads, n, d) if layout == "hnd" else (b, n, heads, d)
            return torch.randn(dims, device="cuda", dtype=dtype, generator=g)
        out.append((rnd(h), rnd(kv_heads), rnd(kv_heads)))
    return out


class PeerUnavailable(Exception):
    pass


def load_sage():
    try:
        import sageattention
        import sageattention.core as core
    except Exception as e:  # noqa: BLE001 - reported in the table
        raise PeerUnavailable(f"import sageattention failed: {first_line(e)}") from e
    ver = getattr(sageattention, "__version__", None)
    if ver is None:
        try:
            from importlib.metadata import version

            ver = version("sageattention")
        except Exception:  # noqa: BLE001
            ver = None
    return sageattention, core, ver


def load_sage2():
    """The official SageAttention 2.2 (in the sage2 worker, from $SAGE2_DIR): its core module and
    the sm90 extension's op wrappers."""
    try:
        import sageattention.core as core
        # The real reason when the extension is missing (core only records SM90_ENABLED = False).
        import sageattention.sm90_compile as sm90
    except Exception as e:  # noqa: BLE001 - reported in the table
        raise PeerUnavailable(f"import of the official SageAttention 2.2 failed: {first_line(e)}") from e
    if not hasattr(core, "sageattn_qk_int8_pv_fp8_cuda_sm90"):
        raise PeerUnavailable(f"{core.__file__} is not SageAttention 2.x (no sm90 entry)")
    return core, sm90


def sage2_version():
    d = os.environ.get("SAGE2_DIR")
    try:
        with open(os.path.join(d, "SOURCE")) as f:
            return "2.2.0 from " + f.read().strip()
    except Exception:  # noqa: BLE001
        return "2.2.0 (source commit unknown)"


def sage2_prepare(torch, core, q, k, v, layout, causal):
    """What sageattn_qk_int8_pv_fp8_cuda_sm90 does before its attention kernel (its defaults:
    per-thread INT8 Q/K with K smoothing, per-channel FP8 V without V smoothing), through the
    library's own functions; returns the kernel's call."""
    tl = layout.upper()
    seq_dim, head_dim = (2 if tl == "HND" else 1), q.size(-1)
    width = 64 if head_dim <= 64 else 128
    if width != head_dim:
        q, k, v = (torch.nn.functional.pad(x, (0, width - head_dim)) for x in (q, k, v))
    km = k.mean(dim=seq_dim, keepdim=True)
    qi, qs, ki, ks = core.per_thread_int8_triton(q, k, km, tensor_layout=tl, BLKQ=64, WARPQ=16,
                                                 BLKK=128, WARPK=128)
    pad = -v.size(seq_dim) % 128
    if pad:
        shape = list(v.shape)
        shape[seq_dim] = pad
        v = torch.cat([v, torch.zeros(shape, dtype=v.dtype, device=v.device)], dim=seq_dim)
    v8, vs, _ = core.per_channel_fp8(v, tensor_layout=tl, smooth_v=False)
    o = torch.empty(q.size(), dtype=q.dtype, device=q.device)
    args = (qi, ki, v8, o, qs, ks, vs, 1 if tl == "HND" else 0, int(causal), 3, head_dim ** -0.5, 0)
    return o[..., :head_dim], args


def peer_callable(torch, name, layout, causal, gqa, sets_data, d, dtype):
    """Returns (context manager factory, fn(i) that runs one call on set i % len)."""
    import contextlib
    import torch.nn.functional as F

    nsets = len(sets_data)
    if name in ("sdpa-flash", "sdpa-cudnn"):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = SDPBackend.FLASH_ATTENTION if name == "sdpa-flash" else SDPBackend.CUDNN_ATTENTION
        if layout == "nhd":
            views = [tuple(x.transpose(1, 2) for x in s) for s in sets_data]
        else:
            views = sets_data
        kwargs = {"is_causal": causal}
        if gqa:
            kwargs["enable_gqa"] = True

        def fn(i):
            q, k, v = views[i % nsets]
            return F.scaled_dot_product_attention(q, k, v, **kwargs)

        return (lambda: sdpa_kernel([backend])), fn
    if name == "sage-1.0.6":
        sage, _, _ = load_sage()
        tl = layout.upper()

        def fn(i):
            q, k, v = sets_data[i % nsets]
            # sageattn subtracts K's mean from k in place; on N(0,1) data that keeps it N(0,1).
            return sage.sageattn(q, k, v, tensor_layout=tl, is_causal=causal)

        return contextlib.nullcontext, fn
    if name == "sage-1.0.6-kernel":
        _, core, _ = load_sage()
        tl = layout.upper()
        seq_dim = 2 if layout == "hnd" else 1
        prepared = []
        for q, k, v in sets_data:
            ks = k - k.mean(dim=seq_dim, keepdim=True)
            if d == 96:
                qi, qs, ki, kss = core.per_block_int8_hd96(q, ks, tensor_layout=tl)
                attn = core.attn_h96_true if causal else core.attn_h96_false
            else:
                qi, qs, ki, kss = core.per_block_int8(q, ks, tensor_layout=tl)
                attn = core.attn_true if causal else core.attn_false
            v16 = v if v.dtype == torch.float16 else v.to(torch.float16)
            prepared.append((qi, ki, v16, qs, kss, attn))

        def fn(i):
            qi, ki, v16, qs, kss, attn = prepared[i % nsets]
            return attn(qi, ki, v16, qs, kss, tensor_layout=tl, output_dtype=dtype)

        return contextlib.nullcontext, fn
    if name in SAGE2_PEERS:
        if not IN_SAGE2_WORKER:
            raise PeerUnavailable(f"{name} runs in the sage2 worker only")
        core, sm90 = load_sage2()
        tl = layout.upper()
        if name == "sage-2.2-sm90":
            full = core.sageattn_qk_int8_pv_fp8_cuda_sm90

            def fn(i):
                q, k, v = sets_data[i % nsets]
                return full(q, k, v, tensor_layout=tl, is_causal=causal)

            return contextlib.nullcontext, fn
        prepared = [sage2_prepare(torch, core, q, k, v, layout, causal) for q, k, v in sets_data]
        kernel = sm90.qk_int8_sv_f8_accum_f32_fuse_v_scale_attn_inst_buf

        def fn(i):
            o, args = prepared[i % nsets]
            kernel(*args)
            return o

        return contextlib.nullcontext, fn
    raise PeerUnavailable(f"unknown peer {name}")


def device_info(torch):
    p = torch.cuda.get_device_properties(0)
    info = {
        "name": p.name,
        "compute_capability": f"{p.major}.{p.minor}",
        "sm_count": p.multi_processor_count,
        "total_memory_bytes": p.total_memory,
        "l2_bytes": getattr(p, "L2_cache_size", 50 << 20),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": str(torch.backends.cudnn.version()),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception as e:  # noqa: BLE001
        info["triton"] = f"unavailable ({first_line(e)})"
    if IN_SAGE2_WORKER:
        info["sageattention"] = sage2_version()
        return info
    try:
        _, _, ver = load_sage()
        info["sageattention"] = ver or "imported (version unknown)"
    except PeerUnavailable as e:
        info["sageattention"] = str(e)
    return info


def run_peers(torch, a, cases, peer_names, on_case=None):
    """Times `peer_names` on `cases`; `on_case(cases so far)` after each case (the sage2 worker
    saves as it goes, so that what it measured survives its crash)."""
    dtype = torch_dtype(torch, a.dtype)
    info = device_info(torch)
    log(f"peers on {info['name']}: torch {info['torch']}, triton {info['triton']}, "
        f"cuDNN {info['cudnn']}, sageattention {info['sageattention']}")
    l2 = info["l2_bytes"]
    out_cases = []
    if not peer_names:
        cases = []
    total = len(cases) * len(peer_names)
    done = 0
    by_shape = {}
    for (d, causal, n) in cases:
        by_shape.setdefault((d, n), []).append(causal)
    for (d, n), causals in by_shape.items():
        shape = (a.batch, a.heads, n, d)
        q_el = a.batch * a.heads * n * d
        kv_el = a.batch * a.kv_heads * n * d
        set_bytes = (q_el + 2 * kv_el) * 2
        sets = a.sets or rotation_sets(set_bytes, l2, a.max_sets)
        try:
            data = make_sets(torch, shape, a.kv_heads, sets, dtype, a.layout, a.seed + d * 1000003 + n)
        except Exception as e:  # noqa: BLE001 - out of memory: every peer fails this shape
            err = first_line(e)
            torch.cuda.empty_cache()
            for causal in causals:
                out_cases.append(case_json(a, d, causal, n, sets,
                                           {p: {"error": err} for p in peer_names}))
                done += len(peer_names)
            log(f"d={d} N={n}: inputs not made: {err}")
            continue
        for causal in causals:
            flops = attention_flops(a.batch, a.heads, n, n, d, causal)
            results = {}
            for name in peer_names:
                done += 1
                label = f"[{done}/{total}] d={d} causal={'on' if causal else 'off'} N={n} {name}"
                try:
                    ctx, fn = peer_callable(torch, name, a.layout, causal, a.kv_heads != a.heads,
                                            data, d, dtype)
                    with ctx():
                        samples, host_ms = time_calls(torch, fn, a)
                    st = summarize(samples)
                    st["host_enqueue_ms"] = host_ms
                    st["tops"] = tops(flops, st["median_ms"])
                    st["tops_max"] = tops(flops, st["min_ms"])
                    results[name] = st
                    log(f"{label}: {st['median_ms']:.4f} ms, {st['tops']:.1f} TOPS "
                        f"({st['iters']} calls, {sets} sets)")
                except Exception as e:  # noqa: BLE001 - reported in the table
                    results[name] = {"error": first_line(e)}
                    log(f"{label}: FAILED: {first_line(e)}")
                    if not isinstance(e, PeerUnavailable) and a.verbose:
                        traceback.print_exc()
                    try:
                        torch.cuda.synchronize()
                    except Exception:  # noqa: BLE001
                        pass
                    torch.cuda.empty_cache()
            out_cases.append(case_json(a, d, causal, n, sets, results))
            if on_case:
                on_case(out_cases)
        del data
        torch.cuda.empty_cache()
    return {
        "tool": "sageattention-compare",
        "version": 1,
        "device": info,
        "config": config_json(a),
        "peers": peer_names,
        "cases": out_cases,
    }


def case_json(a, d, causal, n, sets, results):
    return {
        "head_dim": d, "causal": causal, "seq_len": n, "batch": a.batch, "heads": a.heads,
        "kv_heads": a.kv_heads, "flops": attention_flops(a.batch, a.heads, n, n, d, causal),
        "sets": sets, "results": results,
    }


def config_json(a):
    return {
        "batch": a.batch, "heads": a.heads, "kv_heads": a.kv_heads, "head_dims": a.head_dims,
        "seq_lens": a.seq_lens, "causal": causal_list(a), "dtype": a.dtype, "layout": a.layout,
        "warmup_ms": a.warmup_ms, "min_iters": a.min_iters, "min_seconds": a.min_seconds,
        "max_seconds_per_case": a.max_seconds_per_case, "seed": a.seed,
    }


def causal_list(a):
    return {"both": [False, True], "on": [True], "off": [False]}[a.causal]


# ----------------------------------------------------------------------------------------------
# Accuracy
# ----------------------------------------------------------------------------------------------


def reference(torch, q, k, v, causal):
    """float64 attention on logical [B, H, N, d] tensors (GQA by repetition; causal bottom-right,
    which equals top-left here since qo_len == kv_len)."""
    qd, kd, vd = q.double(), k.double(), v.double()
    g = q.shape[1] // k.shape[1]
    if g > 1:
        kd = kd.repeat_interleave(g, dim=1)
        vd = vd.repeat_interleave(g, dim=1)
    s = (qd @ kd.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if causal:
        nq, nk = q.shape[2], k.shape[2]
        i = torch.arange(nq, device=q.device)[:, None]
        j = torch.arange(nk, device=q.device)[None, :]
        s = s.masked_fill(j > i + nk - nq, float("-inf"))
    return torch.softmax(s, dim=-1) @ vd


def metrics(torch, o, ref):
    o = o.double()
    if not torch.isfinite(o).all():
        return {"rel_l1": float("nan"), "cos_sim": float("nan"), "nonfinite": True}
    rel = ((o - ref).abs().sum() / ref.abs().sum()).item()
    cos = (torch.nn.functional.cosine_similarity(o.flatten(), ref.flatten(), dim=0)).item()
    rmse = ((o - ref) ** 2).mean().sqrt().item()
    return {"rel_l1": rel, "cos_sim": cos, "rmse": rmse}


KIND_NAMES = {"N(0,1)": "normal", "K+8N(0,1)": "koff", "QK ch x20": "outl20", "Q x6": "qx6",
              "Q x40": "qx40"}


def accuracy_cases(a):
    cases = []
    for d in (64, 128):
        for kind in ("N(0,1)", "K+8N(0,1)"):
            for causal in causal_list(a):
                cases.append((d, kind, causal))
    # After the others, so that their inputs stay what they were before these were added.
    if not a.no_hard_inputs:
        for d in (64, 128):
            for kind in HARD_KINDS:
                cases.append((d, kind, False))
    return cases


def make_accuracy_inputs(torch, a, workdir):
    """The accuracy inputs (logical [B, H, N, d], --dtype), also written to a safetensors file
    for our bench and the sage2 worker (metadata `<name>.causal`)."""
    from safetensors.torch import save_file

    dtype = torch_dtype(torch, a.dtype)
    heads = 8
    kv_heads = max(1, heads * a.kv_heads // a.heads) if a.heads % a.kv_heads == 0 else heads
    if heads % kv_heads:
        kv_heads = heads
    b, n = 1, 2048
    g = torch.Generator(device="cuda")
    g.manual_seed(a.seed + 77)
    tensors, meta, inputs = {}, {}, []
    for d, kind, causal in accuracy_cases(a):
        name = f"d{d}_{'causal' if causal else 'full'}_{KIND_NAMES[kind]}"
        q = torch.randn((b, heads, n, d), device="cuda", generator=g)
        k = torch.randn((b, kv_heads, n, d), device="cuda", generator=g)
        if kind == "K+8N(0,1)":
            k = k + 8.0 * torch.randn((b, kv_heads, 1, d), device="cuda", generator=g)
        v = torch.randn((b, kv_heads, n, d), device="cuda", generator=g)
        if kind == "QK ch x20":
            ch = torch.argsort(torch.rand(d, device="cuda", generator=g))[:4]  # 4 channels
            q[..., ch] *= 20.0
            k[..., ch] *= 20.0
        elif kind == "Q x6":
            q = q * 6.0
        elif kind == "Q x40":
            q = q * 40.0
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        inputs.append((name, d, kind, causal, q, k, v))
        for part, t in (("q", q), ("k", k), ("v", v)):
            tensors[f"{name}.{part}"] = t.cpu().contiguous()
        meta[f"{name}.causal"] = "true" if causal else "false"
    path = os.path.join(workdir, "accuracy_in.safetensors")
    save_file(tensors, path, metadata=meta)
    return {"path": path, "inputs": inputs, "shape": [b, heads, n], "kv_heads": kv_heads}


def ours_accuracy(a, in_path, workdir, pv):
    """Our outputs for every input of the file (`bench --accuracy-file`): (tensors, error)."""
    from safetensors.torch import load_file

    if a.skip_ours:
        return {}, "skipped (--skip-ours)"
    out_path = os.path.join(workdir, f"accuracy_out_{pv}.safetensors")
    cmd = [a.bench, "--accuracy-file", in_path, "--accuracy-out", out_path,
           "--layout", a.layout, "--dtype", a.dtype, "--device", "0"]
    if pv != "f16":  # (a bench older than --pv-precision still runs the f16 accuracy)
        cmd += ["--pv-precision", pv]
    log("accuracy: " + " ".join(shlex.quote(c) for c in cmd))
    try:
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=a.bench_timeout)
        sys.stderr.write(r.stdout)
        if r.returncode != 0:
            lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
            return {}, f"bench exited {r.returncode}: {lines[-1] if lines else ''}"[:240]
        return load_file(out_path), None
    except Exception as e:  # noqa: BLE001
        return {}, first_line(e)


def run_accuracy(torch, a, acc, peer_names, sage2_acc, pv_list):
    """Metrics of every peer and of ours on the inputs `make_accuracy_inputs` made. The sage2
    peers' outputs come from the worker (`sage2_acc`)."""
    dtype = torch_dtype(torch, a.dtype)
    b, heads, n = acc["shape"]
    kv_heads = acc["kv_heads"]
    ours = {}
    for pv in pv_list:
        key = "ours" if pv == "f16" else f"ours-{pv}"
        ours[key] = ours_accuracy(a, acc["path"], os.path.dirname(acc["path"]), pv)
    rows = []
    for name, d, kind, causal, q, k, v in acc["inputs"]:
        ref = reference(torch, q, k, v, causal)
        m = {}
        for peer in peer_names:
            if peer in SAGE2_PEERS:
                m[peer] = sage2_metrics(torch, sage2_acc, name, peer, ref)
                continue
            try:
                # k.clone(): the official sageattn subtracts K's mean from k in place.
                one_set = [tuple(to_layout(x, a.layout) for x in (q, k.clone(), v))]
                ctx, fn = peer_callable(torch, peer, a.layout, causal, kv_heads != heads,
                                        one_set, d, dtype)
                with ctx():
                    o = fn(0)
                torch.cuda.synchronize()
                m[peer] = metrics(torch, from_layout(o, a.layout, peer), ref)
            except Exception as e:  # noqa: BLE001
                m[peer] = {"error": first_line(e)}
                torch.cuda.empty_cache()
        for key, (outs, err) in ours.items():
            if err:
                m[key] = {"error": err}
            elif f"{name}.o" in outs:
                m[key] = metrics(torch, outs[f"{name}.o"].cuda(), ref)
            else:
                m[key] = {"error": f"{name}.o missing from the bench's output"}
        label = f"acc d={d} causal={'on' if causal else 'off'} {kind}"
        rows.append({"case": label, "name": name, "head_dim": d, "causal": causal, "inputs": kind,
                     "shape": [b, heads, n, d], "kv_heads": kv_heads, "metrics": m})
        summary = ", ".join(f"{p} {fmt_acc(x)}" for p, x in m.items())
        log(f"{label}: {summary}")
    return rows


def sage2_metrics(torch, sage2_acc, name, peer, ref):
    if not sage2_acc:
        return {"error": "no output from the sage2 worker"}
    err = sage2_acc.get("errors", {}).get(name, {}).get(peer)
    if err:
        return {"error": err}
    o = sage2_acc.get("outputs", {}).get(f"{name}.o.{peer}")
    if o is None:
        return {"error": sage2_acc.get("error") or f"{name}: no {peer} output from the sage2 worker"}
    return metrics(torch, o.cuda(), ref)


def to_layout(x, layout):
    return x if layout == "hnd" else x.transpose(1, 2).contiguous()


def from_layout(o, layout, peer):
    # SDPA returns [B, H, N, d] (given transposed views for NHD); sage returns the input layout.
    if layout == "nhd" and peer.startswith("sage"):
        return o.transpose(1, 2)
    return o


# ----------------------------------------------------------------------------------------------
# Varlen: packed sequences, in this process
# ----------------------------------------------------------------------------------------------

# Columns of the varlen section: SDPA, the official 1.0.6, ours with the prefix sums on the GPU
# (as the others take them) and on the host (no read-back); then, as pv_list says, "ours-<pv>":
# "ours" with pv_precision=<pv> (varlen_peers).
VARLEN_PEERS = ["sdpa-flash", "sage-1.0.6", "ours", "ours-host-cu"]
# Accuracy columns (against SDPA's output), with the "ours-<pv>" peers after them.
VARLEN_ACC = ["sage-1.0.6", "ours"]


def varlen_peers(pvs):
    return VARLEN_PEERS + [f"ours-{pv}" for pv in pvs if pv in OURS_PV]


def varlen_pv(name):
    """The P.V precision of the varlen peer `name` ("ours-fp8" -> "fp8"); None for the others."""
    pv = name[len("ours-"):] if name.startswith("ours-") else None
    return pv if pv in OURS_PV else None


def varlen_lengths(a):
    """The mix: --varlen-seqs lengths drawn uniformly from --varlen-min-len..--varlen-max-len
    (Python's random, seeded by --seed)."""
    rng = random.Random(a.seed)
    return [rng.randint(a.varlen_min_len, a.varlen_max_len) for _ in range(a.varlen_seqs)]


def varlen_cases(a):
    """Per head_dim and causal setting: the mix, then as many sequences of one length (the mix's
    mean, rounded to 64) — about the same tokens, no spread."""
    mix = varlen_lengths(a)
    mean = max(64, int(round(sum(mix) / len(mix) / 64)) * 64)
    cases = []
    for d in a.varlen_head_dims:
        for causal in causal_list(a):
            cases.append({"kind": "mix", "lens": mix, "head_dim": d, "causal": causal})
            cases.append({"kind": "equal", "lens": [mean] * len(mix), "head_dim": d,
                          "causal": causal})
    return cases


def varlen_flops(lens, heads, head_dim, causal):
    return sum(attention_flops(1, heads, n, n, head_dim, causal) for n in lens)


def varlen_label(case):
    lens = case["lens"]
    d, causal = case["head_dim"], "on" if case["causal"] else "off"
    if case["kind"] == "mix":
        what = f"mix {len(lens)} x {min(lens)}..{max(lens)}"
    else:
        what = f"equal {len(lens)} x {lens[0]}"
    return f"d={d} causal={causal} {what}"


def load_ours_wheel():
    """Our Python package, installed by compare.sh from the carried wheel into $SAGE_RS_SITE,
    imported under the name `sageattention_rs` (the official package is `sageattention` too)."""
    if "sageattention_rs" in sys.modules:
        return sys.modules["sageattention_rs"]
    site = os.environ.get("SAGE_RS_SITE")
    if not site:
        raise PeerUnavailable("SAGE_RS_SITE is not set: compare.sh installs our wheel from "
                              ".device/wheels (scripts/device-bundle.sh, carry .device)")
    pkg = os.path.join(site, "sageattention")
    init = os.path.join(pkg, "__init__.py")
    if not os.path.exists(init):
        raise PeerUnavailable(f"no {init}: our wheel is not installed there")
    import importlib.util

    spec = importlib.util.spec_from_file_location("sageattention_rs", init,
                                                  submodule_search_locations=[pkg])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["sageattention_rs"] = mod
    try:
        spec.loader.exec_module(mod)
    except Exception as e:  # noqa: BLE001 - reported in the table
        del sys.modules["sageattention_rs"]
        raise PeerUnavailable(f"importing our wheel failed: {first_line(e)}") from e
    return mod


def sdpa_varlen(torch, sets, cu, lens, causal, gqa):
    """SDPA's flash backend over packed sequences: nested (jagged) tensors when torch runs them
    on flash (one varlen call), else one call per sequence. Returns (mode, fn(i) -> output,
    to_packed(output) -> [total, heads, d])."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    n = len(sets)
    kwargs = {"is_causal": causal}
    if gqa:
        kwargs["enable_gqa"] = True
    try:
        offsets = cu.long()

        def njt(t):
            try:
                return torch.nested.nested_tensor_from_jagged(
                    t, offsets, min_seqlen=min(lens), max_seqlen=max(lens))
            except TypeError:  # a torch without the length hints
                return torch.nested.nested_tensor_from_jagged(t, offsets)

        nested = [tuple(njt(t).transpose(1, 2) for t in s) for s in sets]
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            F.scaled_dot_product_attention(*nested[0], **kwargs)
        torch.cuda.synchronize()

        def fn(i):
            return F.scaled_dot_product_attention(*nested[i % n], **kwargs)

        return ("nested jagged tensors (one flash varlen call)", fn,
                lambda o: o.transpose(1, 2).values())
    except Exception as e:  # noqa: BLE001 - then per sequence
        why = first_line(e)
        torch.cuda.synchronize()
    c = cu.tolist()
    views = [[tuple(t[c[j]:c[j + 1]].transpose(0, 1)[None] for t in s) for j in range(len(lens))]
             for s in sets]

    def fn(i):
        return [F.scaled_dot_product_attention(*x, **kwargs) for x in views[i % n]]

    return (f"{len(lens)} flash calls, one per sequence (nested tensors failed: {why})", fn,
            lambda outs: torch.cat([o[0].transpose(0, 1) for o in outs]))


def varlen_callable(torch, name, sets, cu, lens, causal, gqa):
    """(context factory, fn(i) -> output, to_packed, note) for one varlen peer."""
    n = len(sets)
    mx = max(lens)
    same = (lambda o: o)
    if name in ("ours", "ours-host-cu") or varlen_pv(name):
        rs = load_ours_wheel()
        cu_arg = cu.cpu() if name == "ours-host-cu" else cu
        # Only the 8-bit peers pass the keyword: "ours" stays the wheel's default call.
        kw = {"pv_precision": varlen_pv(name)} if varlen_pv(name) else {}

        def fn(i):
            q, k, v = sets[i % n]
            return rs.sageattn_varlen(q, k, v, cu_arg, cu_arg, mx, mx, is_causal=causal, **kw)

        return contextlib.nullcontext, fn, same, None
    if name == "sage-1.0.6":
        sage, _, _ = load_sage()
        if not hasattr(sage, "sageattn_varlen"):
            raise PeerUnavailable("this sageattention has no sageattn_varlen")

        def fn(i):
            q, k, v = sets[i % n]
            # It subtracts K's mean (over all packed tokens) from k in place; N(0,1) stays so.
            return sage.sageattn_varlen(q, k, v, cu, cu, mx, mx, is_causal=causal)

        return contextlib.nullcontext, fn, same, None
    if name == "sdpa-flash":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        mode, fn, to_packed = sdpa_varlen(torch, sets, cu, lens, causal, gqa)
        return (lambda: sdpa_kernel([SDPBackend.FLASH_ATTENTION])), fn, to_packed, mode
    raise PeerUnavailable(f"unknown varlen peer {name}")


def run_varlen_section(torch, a, pvs):
    """Times the varlen peers (with ours for each 8-bit P.V of `pvs`) on every case of
    `varlen_cases` in this process and measures their accuracy against SDPA's output; returns
    the section's JSON document."""
    dtype = torch_dtype(torch, a.dtype)
    heads, kv_heads = a.heads, a.kv_heads
    gqa = heads != kv_heads
    l2 = device_info(torch)["l2_bytes"]
    cases = varlen_cases(a)
    peers = varlen_peers(pvs)
    acc_peers = VARLEN_ACC + [p for p in peers if varlen_pv(p)]
    out = {"config": {"heads": heads, "kv_heads": kv_heads, "dtype": a.dtype,
                      "head_dims": a.varlen_head_dims, "seed": a.seed,
                      "mix": varlen_lengths(a)},
           "peers": peers, "cases": []}
    try:
        ours = load_ours_wheel()
        out["config"]["ours"] = f"sageattention {ours.__version__} (our wheel)"
    except PeerUnavailable as e:
        out["config"]["ours"] = str(e)
    log(f"varlen: {len(cases)} cases, mix {out['config']['mix']}")
    g = torch.Generator(device="cuda")
    g.manual_seed(a.seed + 4242)
    for case in cases:
        lens, d, causal = case["lens"], case["head_dim"], case["causal"]
        label = varlen_label(case)
        total = sum(lens)
        flops = varlen_flops(lens, heads, d, causal)
        doc = dict(case, tokens=total, flops=flops, results={}, accuracy={}, sdpa_mode=None)
        out["cases"].append(doc)
        set_bytes = total * (heads + 2 * kv_heads) * d * 2
        sets = a.sets or rotation_sets(set_bytes, l2, a.max_sets)
        doc["sets"] = sets
        try:
            cu_list = [0]
            for n in lens:
                cu_list.append(cu_list[-1] + n)
            cu = torch.tensor(cu_list, dtype=torch.int32, device="cuda")
            data = [tuple(torch.randn((total, h, d), device="cuda", dtype=dtype, generator=g)
                          for h in (heads, kv_heads, kv_heads)) for _ in range(sets)]
        except Exception as e:  # noqa: BLE001 - out of memory: every peer fails this case
            err = first_line(e)
            doc["results"] = {p: {"error": err} for p in peers}
            log(f"varlen {label}: inputs not made: {err}")
            torch.cuda.empty_cache()
            continue
        # Accuracy first, on pristine inputs (the official call changes k in place).
        q0, k0, v0 = data[0]
        ref = None
        for name in ["sdpa-flash"] + acc_peers:
            try:
                one = [(q0, k0.clone(), v0)]
                ctx, fn, to_packed, mode = varlen_callable(torch, name, one, cu, lens, causal, gqa)
                with ctx():
                    o = to_packed(fn(0))
                torch.cuda.synchronize()
                if name == "sdpa-flash":
                    ref, doc["sdpa_mode"] = o.double(), mode
                    log(f"varlen {label}: sdpa-flash runs as {mode}")
                elif ref is not None:
                    doc["accuracy"][name] = metrics(torch, o, ref)
                else:
                    doc["accuracy"][name] = {"error": "no SDPA output to compare with"}
                del o
            except Exception as e:  # noqa: BLE001 - reported in the table
                if name != "sdpa-flash":
                    doc["accuracy"][name] = {"error": first_line(e)}
                log(f"varlen {label}: {name} output: FAILED: {first_line(e)}")
                torch.cuda.synchronize()
        del ref
        torch.cuda.empty_cache()
        for name in peers:
            try:
                ctx, fn, _, _ = varlen_callable(torch, name, data, cu, lens, causal, gqa)
                with ctx():
                    samples, host_ms = time_calls(torch, fn, a)
                st = summarize(samples)
                st["host_enqueue_ms"] = host_ms
                st["tops"] = tops(flops, st["median_ms"])
                doc["results"][name] = st
                log(f"varlen {label} {name}: {st['median_ms']:.4f} ms, {st['tops']:.1f} TOPS "
                    f"({st['iters']} calls, {sets} sets)")
            except Exception as e:  # noqa: BLE001 - reported in the table
                doc["results"][name] = {"error": first_line(e)}
                log(f"varlen {label} {name}: FAILED: {first_line(e)}")
                if not isinstance(e, PeerUnavailable) and a.verbose:
                    traceback.print_exc()
                try:
                    torch.cuda.synchronize()
                except Exception:  # noqa: BLE001
                    pass
            torch.cuda.empty_cache()
        # The closures hold the inputs: drop them before the next case's are made.
        ctx = fn = one = None
        del data, q0, k0, v0
        torch.cuda.empty_cache()
    return out


def render_varlen_table(section):
    """The varlen section as text: TOPS per peer, our ratios, accuracy against SDPA; then which
    way SDPA ran and the failures. Pure (works on the section's JSON)."""
    cfg = section.get("config", {})
    peers = section.get("peers", VARLEN_PEERS)
    eight = [p for p in peers if varlen_pv(p)]
    # (ratio prefix, peer): ours, then each 8-bit P.V.
    mine = [("ours", "ours")] + [(varlen_pv(p), p) for p in eight]
    acc_peers = VARLEN_ACC + eight
    mix = cfg.get("mix", [])
    lines = [
        f"varlen (packed sequences, one process, same inputs): heads {cfg.get('heads')}, kv_heads "
        f"{cfg.get('kv_heads')}, {cfg.get('dtype')}; mix of {len(mix)} lengths {mix} "
        f"({sum(mix)} tokens); equal = as many sequences of the mix's mean",
        "TOPS = sum over the sequences of 4*L^2*H*d / median time (halved when causal); ours = "
        "our sageattn_varlen with cu_seqlens on the GPU (read back each call), ours-host-cu = "
        "on the host; accuracy = rel L1 / cos sim against SDPA's output",
    ]
    if eight:
        pvs = [varlen_pv(p) for p in eight]
        lines.append(" / ".join(eight) + " = ours with pv_precision="
                     + " / ".join(f'"{pv}"' for pv in pvs) + " (the 8-bit P.V); "
                     + ", ".join(f"{pv}/X" for pv in pvs) + " = their TOPS / X's")
    lines.append("")
    header = ["case", "tokens"] + peers + \
        [f"{prefix}/{other}" for prefix, _ in mine for other in ("flash", "sage")] + \
        [f"acc {p}" for p in acc_peers]
    rows, failures, modes = [], {}, []
    for c in section.get("cases", []):
        label = varlen_label(c)
        row = [label, str(c.get("tokens", sum(c["lens"])))]
        t = {}
        for p in peers:
            r = c.get("results", {}).get(p)
            if r is None:
                row.append("-")
            elif "error" in r:
                row.append("failed")
                failures.setdefault(p, {}).setdefault(r["error"], []).append(label)
            else:
                t[p] = r.get("tops")
                row.append(fmt_tops(r.get("tops")))
        for _, p in mine:
            for other in ("sdpa-flash", "sage-1.0.6"):
                row.append(f"{t[p] / t[other]:.2f}x" if t.get(p) and t.get(other) else "")
        for p in acc_peers:
            m = c.get("accuracy", {}).get(p)
            row.append(fmt_acc(m))
            if m and "error" in m:
                failures.setdefault(f"{p} (accuracy)", {}).setdefault(m["error"], []).append(label)
        rows.append(row)
        if c.get("sdpa_mode") and c["sdpa_mode"] not in modes:
            modes.append(c["sdpa_mode"])
    text = "\n".join(lines) + "\n" + align(header, rows, 1)
    notes = [f"sdpa-flash ran as: {m}" for m in modes]
    if cfg.get("ours"):
        notes.append(f"ours: {cfg['ours']}")
    for name, errs in failures.items():
        for err, cases in errs.items():
            more = f" (+{len(cases) - 3} more)" if len(cases) > 3 else ""
            notes.append(f"{name} failed on {len(cases)} case(s) [{', '.join(cases[:3])}{more}]: {err}")
    return text, notes


# ----------------------------------------------------------------------------------------------
# Ours
# ----------------------------------------------------------------------------------------------


def run_ours(a, peers_path, out_dir, pv="f16"):
    suffix = "" if pv == "f16" else f"-{pv}"
    ours_path = os.path.join(out_dir, f"ours{suffix}.json")
    cmd = [a.bench,
           "--head-dims", ",".join(map(str, a.head_dims)),
           "--seq-lens", ",".join(map(str, a.seq_lens)),
           "--batch", str(a.batch), "--heads", str(a.heads), "--kv-heads", str(a.kv_heads),
           "--causal", a.causal, "--dtype", a.dtype, "--layout", a.layout,
           "--warmup-ms", str(a.warmup_ms), "--min-iters", str(a.min_iters),
           "--min-seconds", str(a.min_seconds),
           "--max-seconds-per-case", str(a.max_seconds_per_case),
           "--max-sets", str(a.max_sets),
           "--json", ours_path, "--plot", os.path.join(out_dir, f"chart{suffix}.svg")]
    if pv != "f16":
        cmd += ["--pv-precision", pv]
    if a.sets:
        cmd += ["--sets", str(a.sets)]
    if peers_path:
        cmd += ["--peers", peers_path]
    cmd += shlex.split(a.bench_args)
    who = f"ours{' ' + pv if pv != 'f16' else ''}"
    log(f"{who}: " + " ".join(shlex.quote(c) for c in cmd))
    problem = None
    try:
        if os.path.exists(ours_path):
            os.remove(ours_path)
        r = subprocess.run(cmd, timeout=a.bench_timeout)
        if r.returncode != 0:
            problem = f"bench exited with status {r.returncode} (its last lines are in the log above)"
    except Exception as e:  # noqa: BLE001
        problem = f"bench could not run: {first_line(e)}"
    if problem:
        log(f"{who}: {problem}")
    try:
        with open(ours_path) as f:
            return json.load(f), problem
    except Exception as e:  # noqa: BLE001
        log(f"{who}: no results ({first_line(e)})")
        return None, problem or f"no results ({first_line(e)})"


# ----------------------------------------------------------------------------------------------
# The sage2 worker: the official SageAttention 2.2 in its own Python process
# ----------------------------------------------------------------------------------------------


def sage2_unavailable():
    """Why the sage2 peers cannot run here (None when compare.sh made a build)."""
    if os.environ.get("SAGE2_ERROR"):
        return os.environ["SAGE2_ERROR"]
    d = os.environ.get("SAGE2_DIR")
    if not d:
        return ("SAGE2_DIR is not set: carry .peers (scripts/compare.sh --pack-sage2, "
                "docs/bench.md) so that compare.sh builds the official SageAttention 2.2")
    if not os.path.isdir(os.path.join(d, "sageattention")):
        return f"SAGE2_DIR={d} has no sageattention package"
    return None


def run_sage2_worker(a, argv, names, acc_path, workdir, timing):
    """Runs this script with --sage2-worker in a new process (the official 2.2 is also called
    `sageattention`): timing of `names` (when `timing`) and their outputs on the accuracy inputs.
    Returns (timing cases, accuracy dict, error)."""
    import collections
    import threading

    out_json = os.path.join(workdir, "sage2_worker.json")
    acc_out = os.path.join(workdir, "accuracy_out_sage2.safetensors")
    for f in (out_json, acc_out):
        if os.path.exists(f):
            os.remove(f)
    cmd = [sys.executable, os.path.abspath(__file__)] + list(argv) + [
        "--peers", ",".join(names), "--sage2-worker", out_json]
    if not timing:
        cmd.append("--skip-peers")
    if acc_path:
        cmd += ["--sage2-acc-in", acc_path, "--sage2-acc-out", acc_out]
    log("sage2 worker: " + " ".join(shlex.quote(c) for c in cmd))
    tail = collections.deque(maxlen=4)
    rc = None
    try:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        timer = threading.Timer(a.bench_timeout, p.kill)
        timer.start()
        try:
            for line in p.stdout:
                sys.stderr.write(line)
                if line.strip():
                    tail.append(line.strip())
            rc = p.wait()
        finally:
            timer.cancel()
    except Exception as e:  # noqa: BLE001
        err = f"sage2 worker could not run: {first_line(e)}"
        return [], ({"error": err} if acc_path else None), err, None
    result = {}
    try:
        with open(out_json) as f:
            result = json.load(f)
    except Exception:  # noqa: BLE001
        pass
    error = None
    if rc != 0:
        error = f"sage2 worker exited with status {rc}: {tail[-1] if tail else ''}"[:240]
        log(error)
    acc = None
    if acc_path:
        # What it wrote before it died counts; outputs missing after that show its error.
        acc = {"error": error, "errors": result.get("accuracy_errors", {}), "outputs": {}}
        if result.get("accuracy_done") and os.path.exists(acc_out):
            from safetensors.torch import load_file

            acc["outputs"] = load_file(acc_out)
        elif not error:
            acc["error"] = "the sage2 worker wrote no accuracy outputs"
    cases = result.get("cases", [])
    if timing and not cases and error is None:
        error = "the sage2 worker wrote no timings"
    if timing and error:
        # What the worker did not reach (it died) shows its error.
        cases = merge_cases(cases, [case_json(a, d, c, n, 0, {})
                                    for d in a.head_dims for c in causal_list(a) for n in a.seq_lens])
        for c in cases:
            for p in names:
                c["results"].setdefault(p, {"error": error})
    return cases, acc, error, result.get("version")


def sage2_worker(a):
    """--sage2-worker OUT.json: for each sage2 peer in turn (so that a crash of the second leaves
    the first's numbers), its timings (unless --skip-peers), then its outputs on the accuracy
    inputs (--sage2-acc-in/-out); saved as it goes; the main process merges them."""
    global IN_SAGE2_WORKER
    IN_SAGE2_WORKER = True
    d = os.environ.get("SAGE2_DIR")
    if d:
        sys.path.insert(0, d)
    import torch

    result = {"version": sage2_version(), "cases": [], "accuracy_errors": {}}
    outs = {}

    def save():
        with open(a.sage2_worker, "w") as f:
            json.dump(result, f)

    cases = [(hd, c, n) for hd in a.head_dims for c in causal_list(a) for n in a.seq_lens]
    for peer in a.peer_names:
        if not a.skip_peers:
            before = [dict(c, results=dict(c["results"])) for c in result["cases"]]

            def on_case(done, before=before):
                result["cases"] = merge_cases([dict(c, results=dict(c["results"])) for c in before],
                                              done)
                save()

            run_peers(torch, a, cases, [peer], on_case)
        if a.sage2_acc_in:
            sage2_worker_accuracy(torch, a, peer, outs, result["accuracy_errors"])
            result["accuracy_done"] = True
        save()
    return 0


def sage2_worker_accuracy(torch, a, peer, outs, errors):
    """Outputs of `peer` on every input of --sage2-acc-in, added to `outs` and written (with the
    earlier peers') to --sage2-acc-out."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(a.sage2_acc_in, framework="pt") as f:
        meta = f.metadata() or {}
        for name in sorted(k[:-2] for k in f.keys() if k.endswith(".q")):
            q, k, v = (f.get_tensor(f"{name}.{p}").cuda() for p in ("q", "k", "v"))
            causal = meta.get(f"{name}.causal", "false") == "true"
            try:
                one_set = [tuple(to_layout(x, a.layout) for x in (q, k.clone(), v))]
                ctx, fn = peer_callable(torch, peer, a.layout, causal, q.shape[1] != k.shape[1],
                                        one_set, q.shape[-1], q.dtype)
                with ctx():
                    o = fn(0)
                torch.cuda.synchronize()
                outs[f"{name}.o.{peer}"] = from_layout(o, a.layout, peer).contiguous().cpu()
            except Exception as e:  # noqa: BLE001
                errors.setdefault(name, {})[peer] = first_line(e)
                log(f"sage2 worker: accuracy {name} {peer}: {first_line(e)}")
                torch.cuda.empty_cache()
    save_file(outs, a.sage2_acc_out)


def merge_cases(cases, new):
    """`cases` with the results of `new` (case documents) added, by case; sorted."""
    by_key = {case_key(c): c for c in cases}
    for c in new:
        mine = by_key.get(case_key(c))
        if mine is None:
            cases.append(c)
            by_key[case_key(c)] = c
        else:
            mine.setdefault("results", {}).update(c.get("results", {}))
    cases.sort(key=case_key)
    return cases


def merge_peers(peers, names, cases):
    """Adds the sage2 worker's results (`cases`, for peers `names`) to the peers document."""
    peers["peers"] = list(peers.get("peers", [])) + [n for n in names if n not in peers.get("peers", [])]
    merge_cases(peers["cases"], cases)
    return peers


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------


def default_peers():
    old = [p for p in PEERS if p not in SAGE2_PEERS]
    # The official 2.2 when compare.sh built it (or tried to: then its columns say why not).
    if os.environ.get("SAGE2_DIR") or os.environ.get("SAGE2_ERROR"):
        return old + SAGE2_PEERS
    return old


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bench", default=os.environ.get("SAGE_BENCH", ".device/bench"),
                   help="our bench binary (default .device/bench or $SAGE_BENCH)")
    p.add_argument("--out", default=os.environ.get("OUT", "compare-out"),
                   help="output folder (default $OUT, else ./compare-out)")
    p.add_argument("--head-dims", default="64,96,128")
    p.add_argument("--seq-lens", default="1024,2048,4096,8192,16384,32768")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=None)
    p.add_argument("--causal", choices=["both", "on", "off"], default="both")
    p.add_argument("--dtype", choices=["f16", "bf16"], default="f16")
    p.add_argument("--layout", choices=["hnd", "nhd"], default="hnd")
    p.add_argument("--warmup-ms", type=float, default=200.0)
    p.add_argument("--min-iters", type=int, default=10)
    p.add_argument("--min-seconds", type=float, default=0.3)
    p.add_argument("--max-seconds-per-case", type=float, default=10.0)
    p.add_argument("--max-sets", type=int, default=64)
    p.add_argument("--sets", type=int, default=None)
    p.add_argument("--seed", type=int, default=20241002)
    p.add_argument("--peers", default=",".join(default_peers()),
                   help="comma-separated subset of " + ", ".join(PEERS) + " (default: all but "
                   "the sage-2.2 ones, which are added when compare.sh built them)")
    p.add_argument("--ours-int8", choices=["auto", "on", "off"], default="auto",
                   help="also run our bench with --pv-precision int8 (8-bit P.V), and the varlen "
                   "section's ours-int8; auto: on compute capability 9.0 (where the library "
                   "has it)")
    p.add_argument("--ours-fp8", choices=["auto", "on", "off"], default="auto",
                   help="also run our bench with --pv-precision fp8 (e4m3 P.V), and the varlen "
                   "section's ours-fp8; auto: on compute capability 9.0 (its fast path: Hopper)")
    p.add_argument("--no-hard-inputs", action="store_true",
                   help="accuracy without the hard inputs (QK channel outliers x20, Q x6, Q x40)")
    p.add_argument("--varlen", choices=["on", "off", "only"], default="on",
                   help="the varlen section (packed sequences: ours through our wheel, the "
                   "official sageattn_varlen, SDPA); only: nothing else")
    p.add_argument("--varlen-seqs", type=int, default=16, help="sequences of the varlen mix")
    p.add_argument("--varlen-min-len", default="128", help="shortest length of the mix")
    p.add_argument("--varlen-max-len", default="8192", help="longest length of the mix")
    p.add_argument("--varlen-head-dims", default="128")
    p.add_argument("--bench-args", default="", help="extra arguments for our bench (one string)")
    p.add_argument("--bench-timeout", type=float, default=1800.0)
    p.add_argument("--skip-peers", action="store_true")
    p.add_argument("--skip-ours", action="store_true")
    p.add_argument("--skip-accuracy", action="store_true")
    p.add_argument("--verbose", action="store_true", help="tracebacks of peer failures")
    p.add_argument("--selftest", action="store_true", help="check the pure parts, no GPU")
    # Internal: the sage2 worker process (see run_sage2_worker).
    p.add_argument("--sage2-worker", metavar="OUT.json", help=argparse.SUPPRESS)
    p.add_argument("--sage2-acc-in", help=argparse.SUPPRESS)
    p.add_argument("--sage2-acc-out", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.head_dims = [int(x) for x in a.head_dims.split(",") if x.strip()]
    a.seq_lens = [parse_len(x) for x in a.seq_lens.split(",") if x.strip()]
    a.kv_heads = a.kv_heads or a.heads
    a.varlen_head_dims = [int(x) for x in a.varlen_head_dims.split(",") if x.strip()]
    a.varlen_min_len, a.varlen_max_len = parse_len(a.varlen_min_len), parse_len(a.varlen_max_len)
    if a.varlen_seqs < 1 or a.varlen_min_len > a.varlen_max_len:
        p.error("--varlen-seqs must be >= 1 and --varlen-min-len <= --varlen-max-len")
    if a.heads % a.kv_heads:
        p.error(f"--kv-heads {a.kv_heads} must divide --heads {a.heads}")
    a.peer_names = [x.strip() for x in a.peers.split(",") if x.strip()]
    unknown = [x for x in a.peer_names if x not in PEERS]
    if unknown:
        p.error(f"unknown peer(s) {unknown}; known: {PEERS}")
    return a


def pv_list(a, torch):
    """Our P.V precisions to run: f16, then those of OURS_PV as --ours-<pv> says."""
    hopper = False
    if torch is not None:
        try:
            hopper = torch.cuda.get_device_capability(0) == (9, 0)
        except Exception:  # noqa: BLE001
            pass
    flags = {pv: getattr(a, f"ours_{pv}") for pv in OURS_PV}
    return ["f16"] + [pv for pv, f in flags.items() if f == "on" or (f == "auto" and hopper)]


def varlen_section(torch, a, pvs):
    """The varlen section's document; a failure of the whole section becomes its `error`."""
    try:
        return run_varlen_section(torch, a, pvs)
    except Exception as e:  # noqa: BLE001 - reported under the table
        log(f"varlen section failed: {first_line(e)}")
        traceback.print_exc()
        return {"error": first_line(e)}
    finally:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def varlen_text(section):
    if section.get("error"):
        return f"varlen section failed: {section['error']}\n"
    table, notes = render_varlen_table(section)
    return table + ("\n" + "\n".join(notes) + "\n" if notes else "")


def varlen_only(torch, a, pvs):
    """--varlen only: the varlen section alone -> stdout, table.txt, compare.json."""
    os.makedirs(a.out, exist_ok=True)
    if torch is None:
        log("--varlen only needs torch with a CUDA GPU")
        return 1
    info = device_info(torch)
    section = varlen_section(torch, a, pvs)
    text = (f"GPU: {info['name']} ({info['sm_count']} SMs); torch {info['torch']}, triton "
            f"{info['triton']}, official sageattention {info['sageattention']}\n\n"
            + varlen_text(section))
    with open(os.path.join(a.out, "table.txt"), "w") as f:
        f.write(text)
    with open(os.path.join(a.out, "compare.json"), "w") as f:
        json.dump({"device": info, "varlen": section}, f, indent=1)
    print()
    print(text, end="")
    return 0 if not section.get("error") else 1


def main(argv):
    a = parse_args(argv)
    if a.selftest:
        return selftest()
    if a.sage2_worker:
        return sage2_worker(a)
    os.makedirs(a.out, exist_ok=True)
    workdir = os.path.join("/tmp", f"sage-compare-{os.getpid()}")
    os.makedirs(workdir, exist_ok=True)
    try:
        import torch
    except Exception as e:  # noqa: BLE001
        log(f"torch is not importable ({first_line(e)}): no peers, no accuracy")
        torch = None
    if torch is not None and not torch.cuda.is_available():
        log("torch sees no CUDA GPU: no peers, no accuracy")
        torch = None
    pvs = pv_list(a, torch)
    log(f"ours: P.V precision(s) {', '.join(pvs)}")
    if a.varlen == "only":
        return varlen_only(torch, a, pvs)

    cases = [(d, c, n) for d in a.head_dims for c in causal_list(a) for n in a.seq_lens]
    in_process = [p for p in a.peer_names if p not in SAGE2_PEERS]
    sage2_names = [p for p in a.peer_names if p in SAGE2_PEERS]
    peers, peers_path, accuracy, acc = None, None, [], None
    if torch is not None and not a.skip_accuracy:
        try:
            acc = make_accuracy_inputs(torch, a, workdir)
        except Exception as e:  # noqa: BLE001
            log(f"accuracy inputs failed: {first_line(e)}")
            traceback.print_exc()
    timing = torch is not None and not a.skip_peers and bool(a.peer_names)
    if timing:
        peers = run_peers(torch, a, cases, in_process)
    sage2_acc = None
    if torch is not None and sage2_names and (timing or acc):
        why_not = sage2_unavailable()
        if why_not:
            log(f"sage2 peers: {why_not}")
            s2_cases = [case_json(a, d, c, n, 0, {p: {"error": why_not} for p in sage2_names})
                        for d, c, n in cases] if timing else []
            sage2_acc = {"error": why_not}
            version = None
        else:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            s2_cases, sage2_acc, _, version = run_sage2_worker(
                a, argv, sage2_names, acc["path"] if acc else None, workdir, timing)
        if peers is not None:
            merge_peers(peers, sage2_names, s2_cases)
            peers["peers"] = [p for p in a.peer_names if p in peers["peers"]]
            peers["device"]["sageattention2"] = version or (
                "2.2 (not built)" if why_not else sage2_version())
    if peers is not None:
        peers_path = os.path.join(a.out, "peers.json")
        with open(peers_path, "w") as f:
            json.dump(peers, f, indent=1)
        log(f"wrote {peers_path}")
    if acc is not None:
        try:
            accuracy = run_accuracy(torch, a, acc, a.peer_names, sage2_acc, pvs)
        except Exception as e:  # noqa: BLE001
            log(f"accuracy failed: {first_line(e)}")
            traceback.print_exc()
        acc = None  # frees the inputs on the GPU
    varlen = None
    if torch is not None and a.varlen == "on":
        varlen = varlen_section(torch, a, pvs)
    if torch is not None:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    # extra: P.V precision -> our bench's report on it ({}: it gave none; absent: not run).
    ours, extra, notes = None, {}, []
    if not a.skip_ours:
        ours, problem = run_ours(a, peers_path, a.out)
        if problem:
            notes.append(f"ours: {problem}")
        for pv in pvs[1:]:
            report, problem = run_ours(a, peers_path, a.out, pv)
            extra[pv] = report or {}
            if problem:
                notes.append(f"ours {pv}: {problem}")

    table, table_notes = render_table(ours, peers, accuracy, extra)
    notes = table_notes + notes
    for label, report in [("ours", ours)] + [(f"ours {pv}", r) for pv, r in extra.items()]:
        if report and report.get("error"):
            notes.append(f"{label}: the bench stopped early: {report['error']}")
    head = header_lines(ours, peers, extra)
    text = "\n".join(head) + "\n\n" + table + ("\n" + "\n".join(notes) + "\n" if notes else "")
    if varlen is not None:
        text += "\n" + varlen_text(varlen)
    with open(os.path.join(a.out, "table.txt"), "w") as f:
        f.write(text)
    with open(os.path.join(a.out, "compare.json"), "w") as f:
        json.dump(dict({"ours": ours}, **{f"ours_{pv}": extra.get(pv) for pv in OURS_PV},
                       peers=peers, accuracy=accuracy, varlen=varlen), f, indent=1)
    print()
    print(text, end="")
    outputs = ["table.txt", "compare.json", "peers.json", "ours.json", "chart.svg"]
    outputs += [f for pv in OURS_PV for f in (f"ours-{pv}.json", f"chart-{pv}.svg")]
    written = [f for f in outputs if os.path.exists(os.path.join(a.out, f))]
    log(f"wrote {', '.join(written)} in {a.out}")
    return 0


# ----------------------------------------------------------------------------------------------
# Self-test of the pure parts (no torch, no GPU)
# ----------------------------------------------------------------------------------------------


def fake_data():
    def path(ms, flops, iters=20):
        return {"iters": iters, "median_ms": ms, "min_ms": ms * 0.98, "max_ms": ms * 1.1,
                "mean_ms": ms, "p10_ms": ms * 0.99, "p90_ms": ms * 1.02, "tops": tops(flops, ms),
                "tops_max": tops(flops, ms * 0.98)}

    ours_cases, ours8_cases, oursf_cases, peer_cases, sage2_cases = [], [], [], [], []
    old_peers = [p for p in PEERS if p not in SAGE2_PEERS]
    for d in (64, 128):
        for causal in (False, True):
            for n in (1024, 2048):
                fl = attention_flops(4, 32, n, n, d, causal)
                k = fl / 400e12 * 1e3
                case = {"head_dim": d, "causal": causal, "seq_len": n, "batch": 4, "heads": 32,
                        "kv_heads": 32, "flops": fl, "sets": 2}
                ours_cases.append(dict(case, kernel=path(k, fl), full=path(k * 1.1, fl),
                                       quant_overhead_pct=9.1, skipped=None))
                # ours int8: kernel 800 TOPS, full 640
                ours8_cases.append(dict(case, kernel=path(fl / 800e12 * 1e3, fl),
                                        full=path(fl / 640e12 * 1e3, fl),
                                        quant_overhead_pct=20.0, skipped=None))
                # ours fp8: kernel 1000 TOPS, full 760
                oursf_cases.append(dict(case, kernel=path(fl / 1000e12 * 1e3, fl),
                                        full=path(fl / 760e12 * 1e3, fl),
                                        quant_overhead_pct=24.0, skipped=None))
                res = {"sdpa-flash": path(fl / 300e12 * 1e3, fl),
                       "sdpa-cudnn": {"error": "RuntimeError: No available kernel. Aborting execution."},
                       "sage-1.0.6": path(fl / 250e12 * 1e3, fl),
                       "sage-1.0.6-kernel": path(fl / 280e12 * 1e3, fl)}
                peer_cases.append({"head_dim": d, "causal": causal, "seq_len": n, "batch": 4,
                                   "heads": 32, "kv_heads": 32, "results": res})
                if n == 2048 and d == 128:  # the worker died before the last cases
                    continue
                sage2_cases.append({"head_dim": d, "causal": causal, "seq_len": n, "batch": 4,
                                    "heads": 32, "kv_heads": 32, "results": {
                                        "sage-2.2-sm90": path(fl / 500e12 * 1e3, fl),
                                        "sage-2.2-sm90-kernel": path(fl / 900e12 * 1e3, fl)}})
    ours_cases[-1] = dict(ours_cases[-1], kernel=None, full=None, skipped="does not fit in GPU memory")
    ours8_cases[0] = dict(ours8_cases[0], kernel=None, full=None,
                          skipped="the 8-bit P.V needs the sm_90a kernel")
    oursf_cases[1] = dict(oursf_cases[1], kernel=None, full=None,
                          skipped="the FP8 P.V needs the sm_90a kernel")
    dev = {"name": "NVIDIA H100 80GB HBM3", "sm_count": 132, "l2_bytes": 50 << 20}
    cfg = {"batch": 4, "heads": 32, "kv_heads": 32, "dtype": "f16", "layout": "hnd"}
    ours = {"device": dev, "config": cfg, "cases": ours_cases}
    ours8 = {"device": dev, "config": dict(cfg, pv_precision="int8"), "cases": ours8_cases}
    oursf = {"device": dev, "config": dict(cfg, pv_precision="fp8"), "cases": oursf_cases}
    peers = {"peers": old_peers, "cases": peer_cases,
             "device": {"name": "NVIDIA H100 80GB HBM3", "torch": "2.11.0", "triton": "3.6.0",
                        "cudnn": "91000"}}
    acc = [{"case": "acc d=64 causal=off N(0,1)", "shape": [1, 8, 2048, 64], "kv_heads": 8,
            "metrics": {"sdpa-flash": {"rel_l1": 3.1e-4, "cos_sim": 0.99999},
                        "sdpa-cudnn": {"error": "RuntimeError: No available kernel. Aborting execution."},
                        "sage-1.0.6": {"rel_l1": 1.2e-2, "cos_sim": 0.99990},
                        "sage-1.0.6-kernel": {"rel_l1": 1.2e-2, "cos_sim": 0.99990},
                        "sage-2.2-sm90": {"rel_l1": 3.8e-2, "cos_sim": 0.99929},
                        "sage-2.2-sm90-kernel": {"error": "sage2 worker exited with status -9: "},
                        "ours": {"rel_l1": 1.1e-2, "cos_sim": 0.99991},
                        "ours-int8": {"rel_l1": 1.8e-2, "cos_sim": 0.99984},
                        "ours-fp8": {"rel_l1": 3.6e-2, "cos_sim": 0.99935}}}]
    return ours, ours8, oursf, peers, sage2_cases, acc


def selftest():
    assert percentile([1, 2, 3, 4], 10) == 1.3 or abs(percentile([1, 2, 3, 4], 10) - 1.3) < 1e-12
    assert percentile([1, 2, 3, 4], 50) == 2.5
    st = summarize([5, 1, float("nan"), 3, 2, 4])
    assert st["iters"] == 5 and st["median_ms"] == 3 and abs(st["p90_ms"] - 4.6) < 1e-12
    assert attention_flops(4, 32, 4096, 4096, 128, False) == 1099511627776.0
    assert abs(tops(1099511627776.0, 2.0) - 549.755813888) < 1e-6
    assert rotation_sets(30 << 20, 50 << 20, 64) == 4 and rotation_sets(1 << 30, 50 << 20, 64) == 1
    assert parse_len("4k") == 4096 and parse_len("1M") == 1 << 20 and seq_label(32768) == "32K"

    class A:
        min_iters, min_seconds, max_seconds_per_case = 10, 0.3, 10.0

    assert next_batch(1e-4, 0, 0, 0, A) == MAX_BATCH and next_batch(1.0, 0, 0, 0, A) == 1
    assert not should_stop(2, 20.0, 11.0, A) and should_stop(3, 30.0, 11.0, A)
    assert should_stop(10, 0.3, 1.0, A) and not should_stop(9, 5.0, 1.0, A)

    # Arguments: the sage-2.2 peers join the defaults only when compare.sh built (or tried to).
    saved = {k: os.environ.pop(k, None) for k in ("SAGE2_DIR", "SAGE2_ERROR")}
    try:
        a = parse_args([])
        assert a.peer_names == PEERS[:4] and a.ours_int8 == a.ours_fp8 == "auto"
        assert not a.no_hard_inputs
        assert "SAGE2_DIR is not set" in sage2_unavailable()
        assert pv_list(a, None) == ["f16"] and pv_list(parse_args(["--ours-int8", "on"]), None) == ["f16", "int8"]
        assert pv_list(parse_args(["--ours-fp8", "on"]), None) == ["f16", "fp8"]
        assert pv_list(parse_args(["--ours-fp8", "on", "--ours-int8", "on"]), None) == \
            ["f16", "int8", "fp8"]

        def gpu(cc):
            return type("T", (), {"cuda": type("C", (), {
                "get_device_capability": staticmethod(lambda i: cc)})})

        assert pv_list(a, gpu((9, 0))) == ["f16", "int8", "fp8"]
        assert pv_list(a, gpu((8, 9))) == ["f16"]
        assert pv_list(parse_args(["--ours-int8", "off"]), gpu((9, 0))) == ["f16", "fp8"]
        assert pv_list(parse_args(["--ours-fp8", "on"]), gpu((8, 0))) == ["f16", "fp8"]
        assert len(accuracy_cases(a)) == 2 * 2 * 2 + 2 * len(HARD_KINDS)
        assert accuracy_cases(a)[:8] == [(d, k, c) for d in (64, 128) for k in ("N(0,1)", "K+8N(0,1)")
                                         for c in (False, True)]
        assert len(accuracy_cases(parse_args(["--no-hard-inputs", "--causal", "on"]))) == 4
        os.environ["SAGE2_ERROR"] = "building the official SageAttention 2.2 failed"
        assert parse_args([]).peer_names == PEERS and sage2_unavailable().startswith("building")
        del os.environ["SAGE2_ERROR"]
        os.environ["SAGE2_DIR"] = "/nonexistent"
        assert "no sageattention package" in sage2_unavailable()
        assert sage2_version() == "2.2.0 (source commit unknown)"
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None)
            if v is not None:
                os.environ[k] = v

    ours, ours8, oursf, peers, sage2_cases, acc = fake_data()
    # Without the 8-bit P.V and the sage-2.2 peers: the table as before.
    text, notes = render_table(ours, peers, [dict(acc[0], metrics={
        k: v for k, v in acc[0]["metrics"].items() if k in PEERS[:4] + ["ours"]})])
    lines = text.splitlines()
    assert lines[0].startswith("case") and "ours/flash" in lines[0] and "ours/sage-kern" in lines[0]
    assert "int8" not in lines[0] and "fp8" not in lines[0] and "sage2" not in lines[0]
    assert len(lines[0]) == len(lines[1])
    row = next(ln for ln in lines if ln.startswith("d=64 causal=off N=1K"))
    # ours full = 400/1.1 = 363.6 TOPS; flash 300 -> 1.21x; kernel 400 vs sage-kernel 280 -> 1.43x
    assert "363.6" in row and "1.21x" in row and "1.43x" in row and "failed" in row, row
    assert any("skipped" in ln for ln in lines)
    assert any("1.10e-02 / 0.99991" in ln for ln in lines)
    assert any(n.startswith("sdpa-cudnn failed on 9 case(s)") for n in notes), notes
    assert any(n.startswith("ours failed on 1 case(s)") for n in notes), notes

    # With both: the worker's cases merged in (it died before d=128 N=2K: those show failed).
    names = ["sage-2.2-sm90", "sage-2.2-sm90-kernel"]
    died = "sage2 worker exited with status -9: "
    sage2_cases = sage2_cases + [case_json(type("A", (), {"batch": 4, "heads": 32, "kv_heads": 32}),
                                           128, c, 2048, 0, {p: {"error": died} for p in names})
                                 for c in (False, True)]
    merge_peers(peers, names, sage2_cases)
    assert peers["peers"] == PEERS and len(peers["cases"]) == 8
    peers["device"]["sageattention2"] = "2.2.0 from thu-ml/SageAttention d1a57a5"
    both = {"int8": ours8, "fp8": oursf}
    text, notes = render_table(ours, peers, acc, both)
    head_lines = header_lines(ours, peers, both)
    print("\n".join(head_lines) + "\n")
    print(text + "\n".join(notes))
    assert head_lines[-2] == OURS_PV["int8"] and head_lines[-1] == OURS_PV["fp8"], head_lines
    assert head_lines[-1].startswith("ours fp8 = the same with --pv-precision fp8 (e4m3 P x e4m3 V")
    lines = text.splitlines()
    head = lines[0]
    for col in ("sage-2.2-sm90", "sage-2.2-sm90-kernel", "ours int8 kernel", "ours int8 full",
                "ours/sage2", "int8/sage2", "int8/sage2-kern", "int8/flash", "ours fp8 kernel",
                "ours fp8 full", "fp8/flash", "fp8/cudnn", "fp8/sage2", "fp8/sage2-kern"):
        assert col in head, col
    # Our columns, then the ratios, each in the order ours, int8, fp8.
    assert head.index("ours int8 full") < head.index("ours fp8 kernel") < head.index("ours/flash")
    assert head.index("ours/sage2-kern") < head.index("int8/flash") < head.index("fp8/flash")
    assert len(lines[0]) == len(lines[1])
    row = next(ln for ln in lines if ln.startswith("d=128 causal=off N=1K"))
    # int8 full 640 / sage2 500 = 1.28x; int8 kernel 800 / sage2 kernel 900 = 0.89x;
    # ours full 363.6 / sage2 500 = 0.73x
    assert "640.0" in row and "1.28x" in row and "0.89x" in row and "0.73x" in row, row
    # fp8 full 760 / flash 300 = 2.53x, / sage2 500 = 1.52x; fp8 kernel 1000 / sage2 kernel 900
    # = 1.11x, / sage kernel 280 = 3.57x
    assert "760.0" in row and "1000.0" in row, row
    assert "2.53x" in row and "1.52x" in row and "1.11x" in row and "3.57x" in row, row
    row = next(ln for ln in lines if ln.startswith("d=128 causal=on N=2K"))
    assert row.count("failed") == 3 and row.count("skipped") == 2, row  # cudnn, sage2; ours
    row = next(ln for ln in lines if ln.startswith("d=64 causal=off N=1K"))
    assert row.count("skipped") == 2, row  # ours int8
    row = next(ln for ln in lines if ln.startswith("d=64 causal=off N=2K"))
    assert row.count("skipped") == 2 and "640.0" in row, row  # ours fp8
    arow = next(ln for ln in lines if ln.startswith("acc d=64"))
    assert "3.80e-02 / 0.99929" in arow and "1.80e-02 / 0.99984" in arow and "failed" in arow
    assert arow.index("1.80e-02 / 0.99984") < arow.index("3.60e-02 / 0.99935"), arow
    assert any(n.startswith("sage-2.2-sm90 failed on 2 case(s)") for n in notes), notes
    assert any(n.startswith("sage-2.2-sm90-kernel failed on 3 case(s)") for n in notes), notes
    assert any(n.startswith("ours int8 failed on 1 case(s)") and "sm_90a" in n for n in notes), notes
    assert any(n.startswith("ours fp8 failed on 1 case(s) [d=64 causal=off N=2K]") and
               "FP8 P.V" in n for n in notes), notes
    # Without the fp8 run (--ours-fp8 off): none of its columns, lines or notes.
    for extra in ({"int8": ours8}, {"int8": ours8, "fp8": None}):
        text, notes = render_table(ours, peers, acc, extra)
        assert "fp8" not in text and not any("fp8" in n for n in notes), extra.keys()
        assert "ours int8 full" in text.splitlines()[0]
        assert "ours fp8" not in "\n".join(header_lines(ours, peers, extra))
    # fp8 alone: its columns follow ours directly.
    text, _ = render_table(ours, peers, acc, {"fp8": oursf})
    assert "int8" not in text.splitlines()[0] and "fp8/sage2-kern" in text.splitlines()[0]
    # int8 / fp8 asked for but the bench gave nothing: the columns are there, empty.
    text, _ = render_table(ours, peers, acc, {"int8": {}, "fp8": {}})
    lines = text.splitlines()
    assert "ours int8 full" in lines[0] and "ours fp8 full" in lines[0]
    row = next(ln for ln in lines if ln.startswith("d=128 causal=off N=1K"))
    assert row.split()[9:15] == ["400.0", "363.6"] + ["-"] * 4 and "skipped" not in row, row
    # The device and shapes from the fp8 report when it is the only one.
    head_lines = header_lines(None, peers, {"fp8": oursf})
    assert head_lines[0].startswith("GPU: NVIDIA H100 80GB HBM3 (132 SMs"), head_lines
    assert head_lines[2].startswith("shapes: batch 4, heads 32"), head_lines

    varlen_selftest()
    print("\ncompare.py selftest: ok")
    return 0


def varlen_selftest():
    a = parse_args([])
    assert a.varlen == "on" and a.varlen_seqs == 16 and a.varlen_head_dims == [128]
    assert (a.varlen_min_len, a.varlen_max_len) == (128, 8192)
    mix = varlen_lengths(a)
    assert len(mix) == 16 and all(128 <= n <= 8192 for n in mix) and mix == varlen_lengths(a)
    assert varlen_lengths(parse_args(["--seed", "1"])) != mix
    cases = varlen_cases(a)
    assert [c["kind"] for c in cases] == ["mix", "equal"] * 2
    assert [c["causal"] for c in cases] == [False, False, True, True]
    eq = cases[1]["lens"]
    assert len(eq) == 16 and len(set(eq)) == 1 and eq[0] % 64 == 0
    assert abs(sum(eq) - sum(mix)) <= 16 * 32
    assert varlen_flops([100, 200], 2, 64, False) == 4.0 * (100 ** 2 + 200 ** 2) * 2 * 64
    assert varlen_flops([4096] * 4, 32, 128, True) == attention_flops(4, 32, 4096, 4096, 128, True)
    assert parse_args(["--varlen", "only", "--varlen-max-len", "2k"]).varlen_max_len == 2048
    saved = os.environ.pop("SAGE_RS_SITE", None)
    try:
        try:
            load_ours_wheel()
            raise AssertionError("load_ours_wheel without SAGE_RS_SITE")
        except PeerUnavailable as e:
            assert "SAGE_RS_SITE" in str(e)
    finally:
        if saved is not None:
            os.environ["SAGE_RS_SITE"] = saved

    def st(ms, flops):
        return {"iters": 10, "median_ms": ms, "tops": tops(flops, ms)}

    docs = []
    for c in cases:
        fl = varlen_flops(c["lens"], 32, 128, c["causal"])
        res = {"sdpa-flash": st(10.0, fl), "sage-1.0.6": st(8.0, fl), "ours": st(5.0, fl),
               "ours-host-cu": st(4.0, fl)}
        accs = {"sage-1.0.6": {"rel_l1": 2.1e-2, "cos_sim": 0.9997},
                "ours": {"rel_l1": 1.3e-2, "cos_sim": 0.9999}}
        if c["causal"]:
            res["sage-1.0.6"] = {"error": "AssertionError: varlen only support head_dim [64, 128]."}
            accs["sage-1.0.6"] = {"error": "AssertionError: varlen only support head_dim [64, 128]."}
        docs.append(dict(c, tokens=sum(c["lens"]), flops=fl, results=res, accuracy=accs,
                         sdpa_mode="nested jagged tensors (one flash varlen call)"))
    section = {"config": {"heads": 32, "kv_heads": 32, "dtype": "f16", "mix": mix,
                          "ours": "sageattention 0.1.0 (our wheel)"},
               "peers": VARLEN_PEERS, "cases": docs}
    text, notes = render_varlen_table(section)
    print("\n" + text + "\n".join(notes))
    lines = text.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.startswith("case"))
    assert len(lines[head]) == len(lines[head + 1])
    for col in VARLEN_PEERS + ["ours/flash", "ours/sage", "acc ours"]:
        assert col in lines[head], col
    row = next(ln for ln in lines if ln.startswith("d=128 causal=off mix 16 x"))
    assert "2.00x" in row and "1.60x" in row and "1.30e-02 / 0.99990" in row, row
    row = next(ln for ln in lines if ln.startswith("d=128 causal=on equal 16 x"))
    assert row.count("failed") == 2 and "2.00x" in row, row
    assert notes[0] == "sdpa-flash ran as: nested jagged tensors (one flash varlen call)", notes
    assert any(n.startswith("sage-1.0.6 failed on 2 case(s)") for n in notes), notes
    assert any(n.startswith("sage-1.0.6 (accuracy) failed on 2 case(s)") for n in notes), notes
    assert "int8" not in text and "fp8" not in text
    assert varlen_text({"error": "boom"}).startswith("varlen section failed: boom")

    # Ours with the 8-bit P.V: int8 at 4 ms, fp8 at 3.2 ms where an older wheel takes it (it
    # refuses the equal cases here).
    assert varlen_peers(["f16"]) == VARLEN_PEERS
    assert varlen_peers(["f16", "int8", "fp8"]) == VARLEN_PEERS + ["ours-int8", "ours-fp8"]
    assert [varlen_pv(p) for p in ("ours", "ours-host-cu", "ours-int8", "ours-fp8")] == \
        [None, None, "int8", "fp8"]
    old_wheel = 'ValueError: pv_precision must be "f16" or "int8"'
    for doc in docs:
        fl = doc["flops"]
        doc["results"]["ours-int8"] = st(4.0, fl)
        doc["accuracy"]["ours-int8"] = {"rel_l1": 1.9e-2, "cos_sim": 0.99982}
        if doc["kind"] == "equal":
            doc["results"]["ours-fp8"] = doc["accuracy"]["ours-fp8"] = {"error": old_wheel}
        else:
            doc["results"]["ours-fp8"] = st(3.2, fl)
            doc["accuracy"]["ours-fp8"] = {"rel_l1": 3.7e-2, "cos_sim": 0.99931}
    section["peers"] = varlen_peers(["f16", "int8", "fp8"])
    text, notes = render_varlen_table(section)
    print("\n" + text + "\n".join(notes))
    lines = text.splitlines()
    assert 'ours-int8 / ours-fp8 = ours with pv_precision="int8" / "fp8" (the 8-bit P.V); ' \
        "int8/X, fp8/X = their TOPS / X's" in lines, lines
    head = next(i for i, ln in enumerate(lines) if ln.startswith("case"))
    assert len(lines[head]) == len(lines[head + 1])
    cols = lines[head].split()
    assert cols[2:] == VARLEN_PEERS + ["ours-int8", "ours-fp8", "ours/flash", "ours/sage",
                                       "int8/flash", "int8/sage", "fp8/flash", "fp8/sage", "acc",
                                       "sage-1.0.6", "acc", "ours", "acc", "ours-int8", "acc",
                                       "ours-fp8"], cols
    row = next(ln for ln in lines if ln.startswith("d=128 causal=off mix 16 x"))
    # ours 2.00x / 1.60x; int8 10/4 = 2.50x, 8/4 = 2.00x; fp8 10/3.2 = 3.12x, 8/3.2 = 2.50x
    assert row.split()[13:19] == ["2.00x", "1.60x", "2.50x", "2.00x", "3.12x", "2.50x"], row
    assert "1.90e-02 / 0.99982" in row and row.endswith("3.70e-02 / 0.99931"), row
    row = next(ln for ln in lines if ln.startswith("d=128 causal=on equal 16 x"))
    # sage-1.0.6 and ours-fp8 failed, timing and accuracy; no ratio against sage
    assert row.count("failed") == 4 and row.split()[13:15] == ["2.00x", "2.50x"], row
    assert any(n.startswith("ours-fp8 failed on 2 case(s)") and n.endswith(old_wheel)
               for n in notes), notes
    assert any(n.startswith("ours-fp8 (accuracy) failed on 2 case(s)") for n in notes), notes

    # The calls: the 8-bit peers add only pv_precision to ours' (cu_seqlens on the GPU).
    calls = []

    class Cu:
        def cpu(self):
            return "host cu"

    class Wheel:
        @staticmethod
        def sageattn_varlen(*args, **kw):
            calls.append((args[3], kw))

    saved = sys.modules.get("sageattention_rs")
    sys.modules["sageattention_rs"] = Wheel
    try:
        cu = Cu()
        for name in ("ours", "ours-host-cu", "ours-int8", "ours-fp8"):
            varlen_callable(None, name, [("q", "k", "v")], cu, [3, 5], True, False)[1](0)
    finally:
        sys.modules.pop("sageattention_rs")
        if saved is not None:
            sys.modules["sageattention_rs"] = saved
    assert calls == [(cu, {"is_causal": True}), ("host cu", {"is_causal": True}),
                     (cu, {"is_causal": True, "pv_precision": "int8"}),
                     (cu, {"is_causal": True, "pv_precision": "fp8"})], calls


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
