"""GPU tests: results against exact attention and torch's SDPA over shapes, dtypes, layouts, GQA,
causal, LSE and odd lengths; options; errors; streams; several GPUs. Skipped without a CUDA GPU of
compute capability 8.0+."""

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402

import sageattention  # noqa: E402
from sageattention import sageattn, scaled_dot_product_attention  # noqa: E402

from conftest import LSE_ATOL, REL_L1_BOUND, cos_sim, reference, rel_l1, requires_gpu  # noqa: E402

pytestmark = [pytest.mark.gpu, requires_gpu]

DEV = "cuda"

# (batch, q_heads, kv_heads, qo_len, kv_len, head_dim): single tokens, odd lengths, GQA and MQA,
# qo_len < kv_len (decode/chunked prefill), qo_len > kv_len (rows that see no key when causal).
SHAPES = [
    (1, 1, 1, 1, 1, 64),
    (2, 4, 4, 97, 97, 64),
    (1, 8, 2, 128, 333, 128),
    (2, 6, 1, 1025, 1025, 96),
    (1, 4, 4, 17, 1, 128),
    (1, 2, 2, 300, 64, 128),
    (3, 4, 2, 1, 1000, 64),
]


def make(shape, dtype, layout, seed=0):
    b, hq, hk, L, S, d = shape
    g = torch.Generator(device=DEV).manual_seed(seed)

    def t(h, n):
        dims = (b, h, n, d) if layout == "HND" else (b, n, h, d)
        return torch.randn(dims, generator=g, device=DEV, dtype=torch.float32).to(dtype)

    return t(hq, L), t(hk, S), t(hk, S)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("layout", ["HND", "NHD"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "b{}h{}kv{}L{}S{}d{}".format(*s))
def test_against_exact_attention(shape, dtype, layout, causal):
    q, k, v = make(shape, dtype, layout)
    out, lse = sageattn(q, k, v, tensor_layout=layout, is_causal=causal, return_lse=True)
    torch.cuda.synchronize()
    ref, ref_lse = reference(q, k, v, layout, causal)
    assert out.shape == q.shape and out.dtype == dtype and out.device == q.device
    assert lse.shape == ref_lse.shape and lse.dtype == torch.float32
    # Rows that see no key: output 0, LSE -inf.
    empty_rows = torch.isinf(ref_lse)
    assert torch.equal(torch.isinf(lse), empty_rows)
    assert torch.isfinite(out).all()
    if ref.abs().sum() > 0:
        err = rel_l1(out, ref)
        assert err <= REL_L1_BOUND, f"rel L1 {err:.4f}"
    torch.testing.assert_close(lse[~empty_rows], ref_lse[~empty_rows], atol=LSE_ATOL, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("d", [64, 96, 128])
def test_against_torch_sdpa(d, causal, dtype):
    """The literal comparison with SDPA (equal lengths, where both causal conventions agree)."""
    q, k, v = make((2, 8, 8, 513, 513, d), dtype, "HND", seed=1)
    ours = sageattn(q, k, v, is_causal=causal)
    theirs = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    assert rel_l1(ours, theirs) <= REL_L1_BOUND
    assert cos_sim(ours, theirs) >= 0.999


def test_gqa_matches_sdpa_enable_gqa():
    q, k, v = make((2, 16, 4, 256, 256, 128), torch.float16, "HND", seed=2)
    ours = scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    theirs = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert rel_l1(ours, theirs) <= REL_L1_BOUND


@pytest.mark.parametrize("pv_accum", ["f16", "f32"])
@pytest.mark.parametrize("backend", ["auto", "portable"])
@pytest.mark.parametrize("smooth_k", [True, False])
def test_options(pv_accum, backend, smooth_k):
    q, k, v = make((1, 4, 4, 200, 200, 128), torch.bfloat16, "HND", seed=3)
    scale = 0.05
    out = sageattn(q, k, v, sm_scale=scale, smooth_k=smooth_k, pv_accum=pv_accum, backend=backend)
    ref, _ = reference(q, k, v, sm_scale=scale)
    assert rel_l1(out, ref) <= REL_L1_BOUND


# The 8-bit P·V's own contract (library docs: rel L1 about 0.017-0.020 on N(0,1), d = 128,
# N = 2048), with the same 1.5-2x margin as REL_L1_BOUND over the f16 P·V's 0.013.
PV8_REL_L1_BOUND = 0.04


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("d", [64, 96, 128])
@pytest.mark.parametrize("backend", ["auto", "portable"])
def test_int8_pv(d, causal, backend):
    """Both 8-bit kernels: the sm_90a one (auto on Hopper), the portable mma.sync one (portable,
    and auto on any other GPU)."""
    q, k, v = make((2, 8, 2, 700, 900, d), torch.bfloat16, "NHD", seed=7)
    out, lse = sageattn(
        q, k, v, tensor_layout="NHD", is_causal=causal, return_lse=True, pv_precision="int8", backend=backend
    )
    ref, ref_lse = reference(q, k, v, "NHD", causal)
    assert rel_l1(out, ref) <= PV8_REL_L1_BOUND
    finite = torch.isfinite(ref_lse)
    torch.testing.assert_close(lse[finite], ref_lse[finite], atol=LSE_ATOL, rtol=0)


# The FP8 P·V's own contract (library docs: rel L1 about 0.036 on N(0,1) in the CPU emulation),
# with a 1.5x margin.
FP8_REL_L1_BOUND = 0.055


@pytest.mark.skipif(
    torch.cuda.is_available() and torch.cuda.get_device_capability() < (8, 9), reason="FP8 P·V needs sm_89+"
)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("pv_accum", ["f16", "f32"])
@pytest.mark.parametrize("backend", ["auto", "portable"])
def test_fp8_pv(d, causal, pv_accum, backend):
    """The FP8 P·V (e4m3 P and V): the sm_89 kernel with either accumulator, and with
    backend="auto" on Hopper the sm_90a wgmma kernel."""
    q, k, v = make((2, 8, 2, 700, 900, d), torch.bfloat16, "NHD", seed=8)
    out, lse = sageattn(
        q,
        k,
        v,
        tensor_layout="NHD",
        is_causal=causal,
        return_lse=True,
        pv_precision="fp8",
        pv_accum=pv_accum,
        backend=backend,
    )
    ref, ref_lse = reference(q, k, v, "NHD", causal)
    assert rel_l1(out, ref) <= FP8_REL_L1_BOUND
    finite = torch.isfinite(ref_lse)
    torch.testing.assert_close(lse[finite], ref_lse[finite], atol=LSE_ATOL, rtol=0)


def test_smoothing_handles_channel_offsets():
    """K with large per-channel offsets (as in real models): smoothing keeps the error small."""
    q, k, v = make((1, 8, 8, 512, 512, 128), torch.float16, "HND", seed=4)
    offset = 8 * torch.randn(1, 8, 1, 128, device=DEV)
    k = (k.float() + offset).half()
    out = sageattn(q, k, v)
    ref, _ = reference(q, k, v)
    assert rel_l1(out, ref) <= REL_L1_BOUND


def test_strided_inputs_zero_copy():
    """q, k, v as views of one packed qkv projection (timm/transformers style): no copy needed."""
    b, n, h, d = 2, 197, 6, 64
    qkv = torch.randn(b, n, 3, h, d, device=DEV, dtype=torch.float16)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # [b, h, n, d], row stride 3*h*d
    assert not q.is_contiguous()
    out = sageattn(q, k, v)
    ref, _ = reference(q, k, v)
    assert rel_l1(out, ref) <= REL_L1_BOUND
    assert out.is_contiguous() and out.shape == q.shape


def test_sdpa_takes_our_path_when_it_can(monkeypatch):
    from sageattention import _torch_ops

    calls = []
    real_run = _torch_ops._run
    monkeypatch.setattr(_torch_ops, "_run", lambda *a: calls.append(1) or real_run(*a))
    q, k, v = make((1, 4, 4, 64, 64, 64), torch.float16, "HND")
    scaled_dot_product_attention(q, k, v)
    assert calls == [1]
    scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(64, 64, dtype=torch.bool, device=DEV))
    scaled_dot_product_attention(q.float(), k.float(), v.float())
    assert calls == [1]


@pytest.mark.parametrize(
    "name, mutate, exc, message",
    [
        ("head_dim", lambda q, k, v: (torch.zeros(2, 4, 64, 36, device=DEV, dtype=q.dtype),) * 3,
         ValueError, "unsupported head_dim 36"),
        ("float32", lambda q, k, v: (q.float(), k.float(), v.float()), TypeError, "unsupported dtype f32"),
        ("mixed dtypes", lambda q, k, v: (q, k.bfloat16(), v), TypeError, "dtype"),
        ("heads", lambda q, k, v: (q[:, :3].contiguous(), k[:, :2].contiguous(), v[:, :2].contiguous()),
         ValueError, "multiple of kv_heads"),
        ("batch", lambda q, k, v: (q, k[:1], v[:1]), ValueError, "shape mismatch"),
        ("empty", lambda q, k, v: (q[:, :, :0], k, v), ValueError, "empty"),
        ("transposed", lambda q, k, v: (q.transpose(2, 3).contiguous().transpose(2, 3), k, v),
         ValueError, "stride"),
        ("row stride", lambda q, k, v: (torch.zeros(2, 4, 64, 65, device=DEV, dtype=q.dtype)[..., :64], k, v),
         ValueError, "stride"),
        ("misaligned", lambda q, k, v: (torch.zeros(2 * 4 * 64 * 64 + 1, device=DEV, dtype=q.dtype)[1:].view(2, 4, 64, 64), k, v),
         ValueError, "misaligned"),
        ("cpu", lambda q, k, v: (q, k.cpu(), v), ValueError, "cpu"),
        ("3-d", lambda q, k, v: (q[0], k[0], v[0]), ValueError, "4-d"),
    ],
)
def test_errors_raise_with_the_librarys_message(name, mutate, exc, message):
    q, k, v = make((2, 4, 4, 64, 64, 64), torch.float16, "HND")
    args = mutate(q, k, v)
    with pytest.raises(exc, match=message):
        sageattn(*args)
    # The process and the device are fine afterwards.
    out = sageattn(q, k, v)
    torch.cuda.synchronize()
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 0.0])
def test_bad_scale_is_a_value_error(bad):
    q, k, v = make((1, 2, 2, 16, 16, 64), torch.float16, "HND")
    with pytest.raises(ValueError, match="sm_scale"):
        sageattn(q, k, v, sm_scale=bad)


def test_runs_on_torchs_current_stream_and_waits_for_its_producer():
    """Inputs written on a side stream just before the call (after a long GPU delay) must be
    read after the write; the output must be complete for the next op on that stream."""
    q, k, v = make((2, 8, 8, 1024, 1024, 128), torch.float16, "HND", seed=5)
    expect = sageattn(q, k, v)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        q2 = torch.zeros_like(q)
        torch.cuda._sleep(100_000_000)  # ~50 ms of GPU time before the write
        q2.copy_(q)
        out = sageattn(q2, k, v)
        doubled = out * 2  # queued on the side stream after the call
    side.synchronize()
    # Reading the zeros instead (no wait) would give the mean of v in every row: far off.
    torch.testing.assert_close(out, expect, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(doubled, out * 2, rtol=0, atol=0)


def test_output_is_ready_for_the_default_stream():
    q, k, v = make((4, 32, 32, 2048, 2048, 128), torch.float16, "HND", seed=6)
    out = sageattn(q, k, v)
    # No synchronize: the copy is queued on the same (default) stream after the call.
    host = out.float().sum().item()
    ref, _ = reference(q[:1, :2], k[:1, :2], v[:1, :2])
    assert abs(host) < float("inf")
    assert rel_l1(out[:1, :2], ref) <= REL_L1_BOUND


def test_many_calls_and_workspace_release():
    for n in (64, 4096, 128, 2048):
        q, k, v = make((1, 4, 4, n, n, 64), torch.float16, "HND", seed=n)
        out = sageattn(q, k, v)
        ref, _ = reference(q, k, v)
        assert rel_l1(out, ref) <= REL_L1_BOUND
    sageattention.release_workspace()
    out = sageattn(q, k, v)
    assert rel_l1(out, ref) <= REL_L1_BOUND


def test_current_device_is_left_alone():
    before = torch.cuda.current_device()
    q, k, v = make((1, 2, 2, 32, 32, 64), torch.float16, "HND")
    sageattn(q, k, v)
    assert torch.cuda.current_device() == before


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_second_gpu():
    with torch.cuda.device(0):
        q, k, v = (t.to("cuda:1") for t in make((1, 4, 4, 300, 300, 128), torch.float16, "HND"))
        out = sageattn(q, k, v, is_causal=True)
        assert out.device == q.device and torch.cuda.current_device() == 0
    ref, _ = reference(q, k, v, is_causal=True)
    assert rel_l1(out, ref) <= REL_L1_BOUND
    with pytest.raises(ValueError, match="one device"):
        sageattn(q, k.to("cuda:0"), v)
