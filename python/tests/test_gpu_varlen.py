"""GPU tests of sageattn_varlen (packed sequences): against exact attention run on each sequence,
the batched call on equal lengths, the official semantics, options, prefix sums on either device,
strided inputs, errors. Skipped without a CUDA GPU of compute capability 8.0+."""

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402

from sageattention import sageattn, sageattn_varlen  # noqa: E402

from conftest import LSE_ATOL, REL_L1_BOUND, reference, rel_l1, requires_gpu  # noqa: E402

pytestmark = [pytest.mark.gpu, requires_gpu]

DEV = "cuda"

# (query length, key length) per sequence: empty sequences, queries without keys, single rows,
# a chunk of queries against a longer context, lengths that are no multiple of the tiles.
MIXES = {
    "mixed": [(100, 300), (0, 0), (17, 0), (1, 1), (300, 300), (129, 77)],
    "equal-ish": [(256, 256), (255, 255), (257, 257)],
    "one": [(1000, 1000)],
}


def cu(lens):
    out = [0]
    for n in lens:
        out.append(out[-1] + n)
    return torch.tensor(out, dtype=torch.int32, device=DEV)


def make(lens, hq, hk, d, dtype, seed=0):
    g = torch.Generator(device=DEV).manual_seed(seed)
    total_q = sum(lq for lq, _ in lens)
    total_k = sum(lk for _, lk in lens)

    def t(n, h):
        return torch.randn((n, h, d), generator=g, device=DEV, dtype=torch.float32).to(dtype)

    return t(total_q, hq), t(total_k, hk), t(total_k, hk), cu([lq for lq, _ in lens]), cu(
        [lk for _, lk in lens]
    )


def per_sequence_reference(q, k, v, cu_q, cu_k, causal, sm_scale=None):
    """Exact attention of every sequence on its own (conftest.reference, batch 1, NHD): output
    [total_q, hq, d] and LSE [hq, total_q]."""
    o = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    lse = torch.full((q.shape[1], q.shape[0]), float("-inf"), device=q.device)
    cq, ck = cu_q.tolist(), cu_k.tolist()
    for i in range(len(cq) - 1):
        (q0, q1), (k0, k1) = (cq[i], cq[i + 1]), (ck[i], ck[i + 1])
        if q1 == q0 or k1 == k0:
            continue
        ref, ref_lse = reference(
            q[None, q0:q1], k[None, k0:k1], v[None, k0:k1], "NHD", causal, sm_scale
        )
        o[q0:q1] = ref[0]
        lse[:, q0:q1] = ref_lse[0]
    return o, lse


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("heads", [(4, 4), (8, 2)], ids=["mha", "gqa"])
@pytest.mark.parametrize("d", [64, 96, 128])
@pytest.mark.parametrize("mix", list(MIXES), ids=list(MIXES))
def test_against_exact_attention_per_sequence(mix, d, heads, dtype, causal):
    lens = MIXES[mix]
    q, k, v, cu_q, cu_k = make(lens, *heads, d, dtype)
    max_q, max_k = max(n for n, _ in lens), max(n for _, n in lens)
    out, lse = sageattn_varlen(q, k, v, cu_q, cu_k, max_q, max_k, is_causal=causal, return_lse=True)
    torch.cuda.synchronize()
    ref, ref_lse = per_sequence_reference(q, k, v, cu_q, cu_k, causal)
    assert out.shape == q.shape and out.dtype == dtype and out.is_contiguous()
    assert lse.shape == (heads[0], q.shape[0]) and lse.dtype == torch.float32
    no_key = torch.isinf(ref_lse)
    assert torch.equal(torch.isinf(lse), no_key)
    assert torch.isfinite(out).all()
    assert (out.transpose(0, 1)[no_key] == 0).all(), "rows without keys are 0"
    assert rel_l1(out, ref) <= REL_L1_BOUND
    torch.testing.assert_close(lse[~no_key], ref_lse[~no_key], atol=LSE_ATOL, rtol=0)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_equal_lengths_equal_the_batched_call_bit_for_bit(causal):
    """Packed [B·N, H, d] is, in memory, the NHD batch [B, N, H, d]: each sequence is exactly the
    batched call's batch entry (K mean and quantization blocks per sequence)."""
    b, n, h, d = 3, 333, 8, 128
    q, k, v, cu_q, cu_k = make([(n, n)] * b, h, h, d, torch.float16, seed=1)
    out = sageattn_varlen(q, k, v, cu_q, cu_k, n, n, is_causal=causal)
    batched = sageattn(*(t.view(b, n, h, d) for t in (q, k, v)), tensor_layout="NHD", is_causal=causal)
    assert torch.equal(out.view(b, n, h, d), batched)


def test_against_sdpa_per_sequence():
    lens = [(513, 513), (1024, 1024), (77, 77)]
    q, k, v, cu_q, cu_k = make(lens, 8, 8, 128, torch.float16, seed=2)
    out = sageattn_varlen(q, k, v, cu_q, cu_k, 1024, 1024, is_causal=True)
    c = cu_q.tolist()
    for i in range(len(lens)):
        s = slice(c[i], c[i + 1])
        theirs = F.scaled_dot_product_attention(
            *(t[s].transpose(0, 1)[None] for t in (q, k, v)), is_causal=True
        )[0].transpose(0, 1)
        assert rel_l1(out[s], theirs) <= REL_L1_BOUND


@pytest.mark.parametrize("where", ["cuda", "cpu", "cuda-int64"])
def test_cu_seqlens_on_either_device(where):
    lens = MIXES["mixed"]
    q, k, v, cu_q, cu_k = make(lens, 4, 2, 64, torch.float16, seed=3)
    expect = sageattn_varlen(q, k, v, cu_q, cu_k, 300, 300)
    if where == "cpu":
        cu_q, cu_k = cu_q.cpu(), cu_k.cpu()
    elif where == "cuda-int64":
        cu_q, cu_k = cu_q.long(), cu_k.long()
    assert torch.equal(sageattn_varlen(q, k, v, cu_q, cu_k, 300, 300), expect)


@pytest.mark.parametrize("pv_accum", ["f16", "f32"])
@pytest.mark.parametrize("backend", ["auto", "portable"])
@pytest.mark.parametrize("smooth_k", [True, False])
def test_options(pv_accum, backend, smooth_k):
    lens = [(200, 200), (5, 300), (64, 64)]
    q, k, v, cu_q, cu_k = make(lens, 4, 4, 128, torch.bfloat16, seed=4)
    out = sageattn_varlen(
        q, k, v, cu_q, cu_k, 200, 300, sm_scale=0.05, smooth_k=smooth_k, pv_accum=pv_accum,
        backend=backend,
    )
    ref, _ = per_sequence_reference(q, k, v, cu_q, cu_k, False, sm_scale=0.05)
    assert rel_l1(out, ref) <= REL_L1_BOUND


def test_smoothing_is_per_sequence():
    """Each sequence's K has its own large channel offset: the mean is taken per sequence, so
    the error stays at the N(0,1) level (one mean over all tokens would not remove them)."""
    lens = [(300, 300), (400, 400), (200, 200)]
    q, k, v, cu_q, cu_k = make(lens, 8, 8, 128, torch.float16, seed=5)
    c = cu_k.tolist()
    k = k.float()
    for i in range(len(lens)):
        k[c[i]:c[i + 1]] += 8 * torch.randn(1, 8, 128, device=DEV)
    k = k.half()
    out = sageattn_varlen(q, k, v, cu_q, cu_k, 400, 400)
    ref, _ = per_sequence_reference(q, k, v, cu_q, cu_k, False)
    assert rel_l1(out, ref) <= REL_L1_BOUND


def test_strided_inputs_zero_copy():
    """q, k, v as slices of one fused qkv projection [total, 3, h, d]: no copy needed."""
    total, h, d = 397, 6, 64
    qkv = torch.randn(total, 3, h, d, device=DEV, dtype=torch.float16)
    q, k, v = qkv.unbind(1)
    assert not q.is_contiguous()
    cu_q = cu([97, 300])
    out = sageattn_varlen(q, k, v, cu_q, cu_q, 300, 300, is_causal=True)
    ref, _ = per_sequence_reference(q, k, v, cu_q, cu_q, True)
    assert rel_l1(out, ref) <= REL_L1_BOUND and out.is_contiguous()


def test_int8_pv():
    lens = [(700, 900), (300, 300)]
    q, k, v, cu_q, cu_k = make(lens, 8, 2, 128, torch.bfloat16, seed=6)
    out = sageattn_varlen(q, k, v, cu_q, cu_k, 700, 900, is_causal=True, pv_precision="int8")
    ref, _ = per_sequence_reference(q, k, v, cu_q, cu_k, True)
    assert rel_l1(out, ref) <= 0.04


@pytest.mark.parametrize(
    "name, args, exc, message",
    [
        ("not monotone", dict(cu_q=[0, 300, 200, 407]), ValueError, "not monotone"),
        ("first", dict(cu_q=[5, 100, 400, 407]), ValueError, "start at 0"),
        ("total", dict(cu_k=[0, 100, 400, 406]), ValueError, "ends at 406"),
        ("batch", dict(cu_k=[0, 107, 407]), ValueError, "describes 3 sequences but cu_seqlens_k 2"),
        ("max", dict(max_q=299), ValueError, "above the max_seqlen given"),
        ("empty batch", dict(cu_q=[0], cu_k=[0]), ValueError, "0 sequences"),
        ("4-d", dict(q4=True), ValueError, "3-d"),
        ("dtype", dict(cu_dtype=torch.float32), TypeError, "torch.int32"),
    ],
)
def test_errors_raise_and_the_process_survives(name, args, exc, message):
    lens = [(100, 100), (300, 300), (7, 7)]
    q, k, v, cu_q, cu_k = make(lens, 4, 4, 64, torch.float16, seed=7)
    t = lambda x: torch.tensor(x, dtype=args.get("cu_dtype", torch.int32), device=DEV)  # noqa: E731
    a_cu_q = t(args["cu_q"]) if "cu_q" in args else cu_q.to(args.get("cu_dtype", torch.int32))
    a_cu_k = t(args["cu_k"]) if "cu_k" in args else cu_k
    a_q = q[None] if args.get("q4") else q
    with pytest.raises(exc, match=message):
        sageattn_varlen(a_q, k, v, a_cu_q, a_cu_k, args.get("max_q", 300), 300)
    out = sageattn_varlen(q, k, v, cu_q, cu_k, 300, 300)
    torch.cuda.synchronize()
    assert torch.isfinite(out).all()


def test_waits_for_torchs_stream():
    """Inputs and prefix sums written on a side stream just before the call are read after the
    writes."""
    lens = [(1024, 1024), (512, 512)]
    q, k, v, cu_q, cu_k = make(lens, 8, 8, 128, torch.float16, seed=8)
    expect = sageattn_varlen(q, k, v, cu_q, cu_k, 1024, 1024)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        q2 = torch.zeros_like(q)
        cu2 = torch.zeros_like(cu_q)
        torch.cuda._sleep(100_000_000)
        q2.copy_(q)
        cu2.copy_(cu_q)
        out = sageattn_varlen(q2, k, v, cu2, cu2, 1024, 1024)
    side.synchronize()
    torch.testing.assert_close(out, expect, rtol=1e-3, atol=1e-3)


def test_compiles_with_torch_compile():
    lens = [(128, 128), (300, 300)]
    q, k, v, cu_q, cu_k = make(lens, 4, 4, 64, torch.float16, seed=9)

    def f(q, k, v):
        return sageattn_varlen(q * 1.0, k, v, cu_q, cu_k, 300, 300, is_causal=True) * 2

    expect = f(q, k, v)
    torch._dynamo.reset()
    got = torch.compile(f)(q, k, v)
    torch.testing.assert_close(got, expect, rtol=0, atol=0)
