"""Tests that need no GPU (they run in CI). The first group needs no torch either; the second is
skipped when torch is absent."""

import inspect
import os
import subprocess
import sys

import pytest

import sageattention
from sageattention import _native

from conftest import on_path, requires_torch

HND = (0, "torch.float16", (1, 2, 128, 64), (16384, 8192, 64, 1), 0)
CALL = dict(
    tensor_layout="HND",
    is_causal=False,
    sm_scale=None,
    smooth_k=True,
    pv_accum="f16",
    pv_precision="f16",
    backend="auto",
    stream=0,
)


# --- import and signatures (no torch) ------------------------------------------------------------


def test_import_does_not_import_torch():
    code = "import sys, sageattention; sageattention.sageattn; assert 'torch' not in sys.modules"
    env = dict(os.environ, PYTHONPATH=on_path())
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_version_and_head_dims():
    assert isinstance(sageattention.__version__, str) and sageattention.__version__
    assert sageattention.SUPPORTED_HEAD_DIMS == tuple(range(8, 257, 8))


def test_sageattn_signature_is_the_official_one():
    params = inspect.signature(sageattention.sageattn).parameters
    assert list(params) == [
        "q", "k", "v", "tensor_layout", "is_causal", "sm_scale", "return_lse", "smooth_k", "kwargs",
    ]
    defaults = {n: p.default for n, p in params.items() if p.default is not inspect.Parameter.empty}
    assert defaults == {
        "tensor_layout": "HND",
        "is_causal": False,
        "sm_scale": None,
        "return_lse": False,
        "smooth_k": True,
    }
    assert params["kwargs"].kind is inspect.Parameter.VAR_KEYWORD


def test_sageattn_varlen_signature_is_the_official_one():
    params = inspect.signature(sageattention.sageattn_varlen).parameters
    assert list(params) == [
        "q", "k", "v", "cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q", "max_seqlen_k",
        "is_causal", "sm_scale", "smooth_k", "kwargs",
    ]
    defaults = {n: p.default for n, p in params.items() if p.default is not inspect.Parameter.empty}
    assert defaults == {"is_causal": False, "sm_scale": None, "smooth_k": True}
    assert params["kwargs"].kind is inspect.Parameter.VAR_KEYWORD


def test_varlen_keywords_are_checked():
    with pytest.raises(TypeError, match="unexpected keyword argument.*'tensor_layout'"):
        sageattention.sageattn_varlen(None, None, None, None, None, 1, 1, tensor_layout="HND")
    with pytest.raises(TypeError, match="return_lse must be a bool"):
        sageattention.sageattn_varlen(None, None, None, None, None, 1, 1, return_lse=1)
    x = [[[0.0] * 64]]
    with pytest.raises(TypeError, match="must be a torch.Tensor.*builtins.list"):
        sageattention.sageattn_varlen(x, x, x, [0, 1], [0, 1], 1, 1)


def test_sdpa_signature_is_torchs():
    params = inspect.signature(sageattention.scaled_dot_product_attention).parameters
    assert list(params) == [
        "query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa",
    ]
    assert [params[n].default for n in list(params)[3:]] == [None, 0.0, False, None, False]


def test_unknown_keyword_is_a_type_error():
    with pytest.raises(TypeError, match="unexpected keyword argument.*'qk_quant_gran'"):
        sageattention.sageattn(None, None, None, qk_quant_gran="per_warp")


def test_our_keyword_must_be_a_string():
    with pytest.raises(TypeError, match="pv_accum must be a str"):
        sageattention.sageattn(None, None, None, pv_accum=32)


@pytest.mark.parametrize("func", [sageattention.sageattn, sageattention.scaled_dot_product_attention])
def test_lists_are_a_type_error(func):
    x = [[[[0.0] * 64]]]
    with pytest.raises(TypeError, match="must be a torch.Tensor.*builtins.list"):
        func(x, x, x)


@pytest.mark.parametrize("func", [sageattention.sageattn, sageattention.scaled_dot_product_attention])
def test_numpy_arrays_are_a_type_error(func):
    np = pytest.importorskip("numpy")
    x = np.zeros((1, 2, 16, 64), dtype=np.float16)
    with pytest.raises(TypeError, match="must be a torch.Tensor.*numpy.ndarray"):
        func(x, x, x)


# --- the extension module's checks (no torch, no GPU) ---------------------------------------------


def test_native_rejects_unsupported_dtype():
    bad = (0, "torch.int8") + HND[2:]
    with pytest.raises(TypeError, match="dtype torch.int8"):
        _native.attention(bad, HND, HND, HND, None, **CALL)


def test_native_rejects_wrong_rank():
    bad = (0, "torch.float16", (2, 128, 64), (8192, 64, 1), 0)
    with pytest.raises(ValueError, match="must be 4-d"):
        _native.attention(HND, bad, HND, HND, None, **CALL)


def test_native_rejects_cpu_device():
    bad = HND[:4] + (-1,)
    with pytest.raises(ValueError, match="not on a CUDA device"):
        _native.attention(HND, HND, bad, HND, None, **CALL)


def test_native_rejects_negative_size():
    bad = (0, "torch.float16", (1, -2, 128, 64), HND[3], 0)
    with pytest.raises(ValueError, match="negative size"):
        _native.attention(bad, HND, HND, HND, None, **CALL)


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("tensor_layout", "BHSD", "tensor_layout must be"),
        ("pv_accum", "fp8", "pv_accum must be"),
        ("pv_precision", "fp4", "pv_precision must be"),
        ("backend", "cuda", "backend must be"),
    ],
)
def test_native_rejects_bad_options(option, value, message):
    with pytest.raises(ValueError, match=message):
        _native.attention(HND, HND, HND, HND, None, **dict(CALL, **{option: value}))


def test_native_rejects_bad_lse():
    bad = (0, "torch.float16", (1, 2, 128), (256, 128, 1), 0)
    with pytest.raises(TypeError, match="lse"):
        _native.attention(HND, HND, HND, HND, bad, **CALL)
    bad = (0, "torch.float32", (1, 2, 127), (254, 127, 1), 0)
    with pytest.raises(ValueError, match="lse"):
        _native.attention(HND, HND, HND, HND, bad, **CALL)


def test_native_wrong_argument_types_are_type_errors():
    with pytest.raises(TypeError):
        _native.attention("q", HND, HND, HND, None, **CALL)
    with pytest.raises(TypeError):
        _native.attention(HND, HND, HND, HND, None, **dict(CALL, is_causal="yes", stream="s"))


def test_native_missing_keyword_is_a_type_error():
    partial = {k: v for k, v in CALL.items() if k != "stream"}
    with pytest.raises(TypeError, match="stream"):
        _native.attention(HND, HND, HND, HND, None, **partial)
    with pytest.raises(TypeError, match="missing keyword arguments"):
        _native.attention(HND, HND, HND, HND, None)


def test_native_valid_arguments_reach_the_driver_without_dying():
    """Well-formed numbers for memory that does not exist: the library's checks must answer with
    an exception (no driver: RuntimeError; a driver: the pointer is not device memory), never a
    crash."""
    with pytest.raises((RuntimeError, ValueError)):
        _native.attention(HND, HND, HND, HND, None, **CALL)
    if not _native.driver_available():
        with pytest.raises(RuntimeError, match="CUDA driver is not available"):
            _native.attention(HND, HND, HND, HND, None, **CALL)


# Packed q [10, 4, 64] and k/v [12, 2, 64] at fake addresses: the varlen checks need no driver.
PQ = (1 << 20, "torch.float16", (10, 4, 64), (256, 64, 1), 0)
PK = (1 << 32, "torch.float16", (12, 2, 64), (128, 64, 1), 0)
VARLEN = dict(CALL, tensor_layout="NHD")
CU_Q, CU_K = [0, 3, 3, 10], [0, 0, 5, 12]


def varlen(cu_q=CU_Q, cu_k=CU_K, max_q=7, max_k=7, q=PQ, lse=None):
    _native.attention_varlen(q, PK, PK, q, lse, cu_q, cu_k, max_q, max_k, **VARLEN)


@pytest.mark.parametrize(
    "cu_q, cu_k, max_q, message",
    [
        ([0, 3, 2, 10], CU_K, 7, "`cu_seqlens_q` is not monotone: entry 2 is 2 after 3"),
        ([1, 3, 3, 10], CU_K, 7, r"`cu_seqlens_q`\[0\] is 1"),
        (CU_Q, [0, 0, 5, 11], 7, "`cu_seqlens_k` ends at 11 but the packed tensor `k` holds 12"),
        (CU_Q, [0, 6, 12], 7, "cu_seqlens_q describes 3 sequences but cu_seqlens_k 2"),
        ([0], [0], 7, "`cu_seqlens_q` has 1 entries"),
        (CU_Q, CU_K, 6, "sequence 2 of `cu_seqlens_q` has length 7, above the max_seqlen given"),
    ],
)
def test_native_varlen_rejects_bad_cu_seqlens_without_a_driver(cu_q, cu_k, max_q, message):
    with pytest.raises(ValueError, match=message):
        varlen(cu_q, cu_k, max_q)


def test_native_varlen_rejects_bad_arguments():
    with pytest.raises(ValueError, match="max_seqlen_k must be >= 0"):
        varlen(max_k=-1)
    with pytest.raises(ValueError, match="must be 3-d"):
        varlen(q=(1 << 20, "torch.float16", (1, 10, 4, 64), (2560, 256, 64, 1), 0))
    with pytest.raises(ValueError, match="unsupported head_dim 264"):
        varlen(q=(1 << 20, "torch.float16", (10, 4, 264), (1056, 264, 1), 0))
    with pytest.raises(TypeError, match="lse"):
        varlen(lse=(1 << 36, "torch.float16", (4, 10), (10, 1), 0))
    with pytest.raises(ValueError, match=r"contiguous \[q_heads, total_q\]"):
        varlen(lse=(1 << 36, "torch.float32", (10, 4), (4, 1), 0))
    with pytest.raises(TypeError):
        varlen(cu_q="0,3,3,10")


def test_native_varlen_valid_arguments_reach_the_driver_without_dying():
    with pytest.raises((RuntimeError, ValueError)):
        varlen()
    if not _native.driver_available():
        with pytest.raises(RuntimeError, match="CUDA driver is not available"):
            varlen()


def test_release_workspace_of_an_unused_device_is_a_no_op():
    sageattention.release_workspace(0)
    sageattention.release_workspace(7)


# --- with torch, on the CPU -----------------------------------------------------------------------


@requires_torch
def test_cpu_tensors_are_a_value_error():
    import torch

    q = torch.randn(1, 2, 16, 64, dtype=torch.float16)
    with pytest.raises(ValueError, match="q is on cpu"):
        sageattention.sageattn(q, q, q)


@requires_torch
def test_mixed_tensor_and_array_is_a_type_error():
    import torch

    np = pytest.importorskip("numpy")
    q = torch.randn(1, 2, 16, 64, dtype=torch.float16)
    with pytest.raises(TypeError, match="k must be a torch.Tensor.*numpy.ndarray"):
        sageattention.sageattn(q, np.zeros((1, 2, 16, 64)), q)


@requires_torch
def test_bad_layout_is_a_value_error_before_any_device_check():
    import torch

    q = torch.randn(1, 2, 16, 64, dtype=torch.float16)
    with pytest.raises(ValueError, match="tensor_layout"):
        sageattention.sageattn(q, q, q, tensor_layout="BSHD")
    with pytest.raises(TypeError, match="softmax scale"):
        sageattention.sageattn(q, q, q, sm_scale="big")


@requires_torch
def test_sdpa_falls_back_on_cpu_and_logs_once(caplog):
    import torch
    import torch.nn.functional as F

    from sageattention import _torch_ops

    _torch_ops._logged_reasons.discard("device")
    # float16 and head_dim 64: everything but the device would take our path.
    q, k, v = (torch.randn(2, 4, 33, 64, dtype=torch.float16) for _ in range(3))
    with caplog.at_level("WARNING", logger="sageattention"):
        for _ in range(3):
            out = sageattention.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True))
    messages = [r.getMessage() for r in caplog.records if "falls back" in r.getMessage()]
    assert len(messages) == 1 and "cpu" in messages[0], messages


@requires_torch
def test_sdpa_fallback_survives_patching_torch():
    """With F.scaled_dot_product_attention patched to ours, the fallback still reaches torch's
    (no recursion)."""
    import torch
    import torch.nn.functional as F

    original = F.scaled_dot_product_attention
    q = torch.randn(1, 2, 9, 80)
    try:
        F.scaled_dot_product_attention = sageattention.scaled_dot_product_attention
        out = F.scaled_dot_product_attention(q, q, q)
    finally:
        F.scaled_dot_product_attention = original
    torch.testing.assert_close(out, original(q, q, q))


@requires_torch
def test_sdpa_fallback_passes_every_argument():
    import torch
    import torch.nn.functional as F

    q = torch.randn(2, 8, 5, 64)
    kv = torch.randn(2, 2, 7, 64)
    mask = torch.randn(5, 7) > 0
    torch.manual_seed(0)
    a = sageattention.scaled_dot_product_attention(
        q, kv, kv, attn_mask=mask, dropout_p=0.0, scale=0.3, enable_gqa=True
    )
    b = F.scaled_dot_product_attention(q, kv, kv, attn_mask=mask, scale=0.3, enable_gqa=True)
    torch.testing.assert_close(a, b)


@requires_torch
@pytest.mark.parametrize(
    "case, key",
    [
        (dict(attn_mask=True), "attn_mask"),
        (dict(dropout_p=0.1), "dropout"),
        (dict(dtype="float32"), "dtype"),
        (dict(d=84), "head_dim"),  # not a multiple of 8 (every multiple from 8 to 256 runs)
        (dict(S=48, is_causal=True), "causal"),
        (dict(hk=2), "heads"),
        (dict(ndim=3), "ndim"),
        (dict(requires_grad=True), "autograd"),
        (dict(), "device"),
    ],
)
def test_fallback_reasons(case, key):
    import torch

    from sageattention._torch_ops import fallback_reason

    dtype = getattr(torch, case.get("dtype", "float16"))
    d, S, hk = case.get("d", 64), case.get("S", 32), case.get("hk", 4)
    q = torch.randn(2, 4, 32, d, dtype=dtype, requires_grad=case.get("requires_grad", False))
    k = torch.randn(2, hk, S, d, dtype=dtype)
    if case.get("ndim") == 3:
        q, k = q[0], k[0]
    mask = torch.ones(32, S, dtype=torch.bool) if case.get("attn_mask") else None
    reason = fallback_reason(
        q, k, k, attn_mask=mask, dropout_p=case.get("dropout_p", 0.0),
        is_causal=case.get("is_causal", False),
    )
    assert reason is not None and reason[0] == key, reason


@requires_torch
@pytest.mark.parametrize(
    "cu, max_q, exc, message",
    [
        ("float", 4, TypeError, "cu_seqlens_q has dtype torch.float32"),
        ("2-d", 4, ValueError, "cu_seqlens_q must be 1-d"),
        ("list", 4, TypeError, "cu_seqlens_q must be a torch.Tensor"),
        ("int64 overflow", 4, ValueError, "outside int32"),
        ("ok", "4", TypeError, "max_seqlen_q must be an int"),
        ("ok", -1, ValueError, "max_seqlen_q must be >= 0"),
        ("ok", 4, ValueError, "q is on cpu"),
    ],
)
def test_varlen_argument_errors_on_the_cpu(cu, max_q, exc, message):
    import torch

    q = torch.randn(8, 2, 64, dtype=torch.float16)
    good = torch.tensor([0, 4, 8], dtype=torch.int32)
    cu_q = {
        "float": good.float(),
        "2-d": good[None],
        "list": [0, 4, 8],
        "int64 overflow": torch.tensor([0, 4, 2**40], dtype=torch.int64),
        "ok": good,
    }[cu]
    with pytest.raises(exc, match=message):
        sageattention.sageattn_varlen(q, q, q, cu_q, good, max_q, 4)


@requires_torch
def test_varlen_custom_op_is_registered_with_a_fake_kernel():
    import torch

    from sageattention import _torch_ops  # noqa: F401  (registers the op)

    op = torch.ops.sageattention_rs.sageattn_varlen
    q = torch.empty(300, 8, 128, dtype=torch.bfloat16, device="meta")
    k = torch.empty(500, 2, 128, dtype=torch.bfloat16, device="meta")
    cu = torch.empty(4, dtype=torch.int32, device="meta")
    out, lse = op(q, k, k, cu, cu, 200, 300, True, None, True, True, "f16", "f16", "auto")
    assert out.shape == q.shape and out.dtype == q.dtype
    assert lse.shape == (8, 300) and lse.dtype == torch.float32
    out, lse = op(q, k, k, cu, cu, 200, 300, False, 0.1, False, True, "f16", "f16", "auto")
    assert lse.numel() == 0


@requires_torch
def test_custom_op_is_registered_with_a_fake_kernel():
    """The op's fake (meta) implementation gives the shapes torch.compile traces with."""
    import torch

    from sageattention import _torch_ops  # noqa: F401  (registers the op)

    op = torch.ops.sageattention_rs.sageattn
    q = torch.empty(2, 77, 8, 128, dtype=torch.bfloat16, device="meta")
    k = torch.empty(2, 300, 2, 128, dtype=torch.bfloat16, device="meta")
    out, lse = op(q, k, k, "NHD", True, None, True, True, "f16", "f16", "auto")
    assert out.shape == q.shape and out.dtype == q.dtype and out.is_contiguous()
    assert lse.shape == (2, 8, 77) and lse.dtype == torch.float32
    out, lse = op(q, k, k, "NHD", False, 0.5, False, True, "f32", "int8", "portable")
    assert lse.numel() == 0
