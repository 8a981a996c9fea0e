"""Shared helpers. torch is optional here: the CPU tests run without it (CI), the GPU tests skip
themselves when torch or a CUDA device of compute capability 8.0+ is missing.

The tests must run against an installed wheel (the extension module is built by maturin, not
present in the source tree): `pip install <wheel>` or `--target DIR` + PYTHONPATH.
"""

import os
import sys

import pytest

import sageattention

_SOURCE_PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sageattention")

# Accuracy bound of one call against exact (float32) attention, as relative L1 error
# sum|o - ref| / sum|ref|. The library measures 0.012-0.013 on N(0,1) inputs at N = 2048 for every
# head_dim and dtype (README, accuracy table: INT8 Q·Kᵀ with per-block scales, FP16 P·V); 0.03
# leaves 2.3x of margin for short sequences and bf16 output rounding (2^-9 relative) while still
# failing on any real defect (a wrong mask, a stale input or a wrong head mapping gives >= 0.1).
REL_L1_BOUND = 0.03
# The LSE's absolute error is at most the largest score error (d lse = sum_j p_j d s_j); with
# INT8 steps of amax/127 the score error stays near 0.01-0.02 for N(0,1) inputs.
LSE_ATOL = 0.05


def pytest_report_header(config):
    where = os.path.dirname(os.path.abspath(sageattention.__file__))
    return f"sageattention {sageattention.__version__} from {where}"


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs torch and a CUDA GPU of compute capability 8.0+")
    where = os.path.dirname(os.path.abspath(sageattention.__file__))
    if where == _SOURCE_PACKAGE:
        raise pytest.UsageError(
            "sageattention was imported from the source tree (no extension module there): install "
            "the wheel and run pytest from outside python/ (e.g. `python -m pytest python/tests` "
            "from the repository root)"
        )


def torch_or_none():
    try:
        import torch
    except ImportError:
        return None
    return torch


def gpu_available() -> bool:
    torch = torch_or_none()
    if torch is None or not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(0) >= (8, 0)


requires_torch = pytest.mark.skipif(torch_or_none() is None, reason="torch is not installed")
requires_gpu = pytest.mark.skipif(
    not gpu_available(), reason="needs torch with a CUDA GPU of compute capability 8.0+"
)


def rel_l1(a, b) -> float:
    a = a.double()
    b = b.double()
    return ((a - b).abs().sum() / b.abs().sum().clamp_min(1e-30)).item()


def cos_sim(a, b) -> float:
    a = a.double().flatten()
    b = b.double().flatten()
    return (a @ b / (a.norm() * b.norm()).clamp_min(1e-30)).item()


def reference(q, k, v, tensor_layout="HND", is_causal=False, sm_scale=None):
    """Exact attention in float32 with this library's semantics (GQA by head groups, causal mask
    bottom-right aligned, rows that see no key give 0 and LSE -inf). Returns (out in q's layout,
    lse [batch, q_heads, qo_len])."""
    import torch

    if tensor_layout == "NHD":
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    q, k, v = (t.float() for t in (q, k, v))
    hq, hk = q.shape[1], k.shape[1]
    if hq != hk:
        k = k.repeat_interleave(hq // hk, dim=1)
        v = v.repeat_interleave(hq // hk, dim=1)
    scale = sm_scale if sm_scale is not None else q.shape[-1] ** -0.5
    s = (q @ k.transpose(-1, -2)) * scale
    if is_causal:
        L, S = q.shape[2], k.shape[2]
        i = torch.arange(L, device=q.device)[:, None]
        j = torch.arange(S, device=q.device)[None, :]
        s = s.masked_fill(j > i + (S - L), float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)
    o = p @ v
    if tensor_layout == "NHD":
        o = o.transpose(1, 2)
    return o, lse


def on_path():
    """The Python interpreter's own path entries, for subprocess tests."""
    return os.pathsep.join(p for p in sys.path if p)
