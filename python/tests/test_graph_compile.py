"""CUDA graph capture and replay, torch.compile, and the custom op's own checks."""

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402

import sageattention  # noqa: E402
from sageattention import sageattn, scaled_dot_product_attention  # noqa: E402

from conftest import REL_L1_BOUND, reference, rel_l1, requires_gpu  # noqa: E402

pytestmark = [pytest.mark.gpu, requires_gpu]

DEV = "cuda"


def rand(*shape, dtype=torch.float16):
    return torch.randn(*shape, device=DEV, dtype=dtype)


def capture(fn, warmup=2):
    """torch's recipe: warm up on a side stream, then capture."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        result = fn()
    return graph, result


def refill(*tensors):
    for t in tensors:
        t.copy_(torch.randn_like(t))


@pytest.mark.parametrize(
    "layout, causal, lse, pv",
    [
        ("HND", False, False, "f16"),
        ("HND", True, True, "f16"),
        ("NHD", True, False, "f16"),
        ("NHD", False, True, "f16"),
        # The 8-bit paths: on Hopper their kernels always load K and V through TMA descriptors
        # written into the call's scratch, which a replay must find intact.
        ("HND", True, False, "int8"),
        ("NHD", False, True, "fp8"),
    ],
)
def test_graph_capture_and_replay(layout, causal, lse, pv):
    if pv == "fp8" and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 P·V needs sm_89+")
    b, hq, hk, n, d = 2, 8, 2, 333, 128
    dims = (lambda h: (b, h, n, d)) if layout == "HND" else (lambda h: (b, n, h, d))
    q, k, v = rand(*dims(hq)), rand(*dims(hk)), rand(*dims(hk))

    def step():
        return sageattn(
            q, k, v, tensor_layout=layout, is_causal=causal, return_lse=lse, pv_precision=pv
        )

    graph, static = capture(step)
    static_out = static[0] if lse else static
    for _ in range(3):
        refill(q, k, v)
        graph.replay()
        eager = step()
        torch.cuda.synchronize()
        eager_out = eager[0] if lse else eager
        # The same kernels on the same inputs: equal up to nothing but scheduling.
        torch.testing.assert_close(static_out, eager_out, rtol=1e-3, atol=1e-3)
        if lse:
            torch.testing.assert_close(static[1], eager[1], rtol=1e-4, atol=1e-4)
        ref, _ = reference(q, k, v, layout, causal)
        # e4m3 P and V: the FP8 path's looser bound (test_gpu.py's, which says why).
        assert rel_l1(static_out, ref) <= (0.055 if pv == "fp8" else REL_L1_BOUND)


def test_graph_survives_workspace_growth_and_release():
    """The captured call owns its scratch memory: a later, larger eager call (which grows the
    runtime's workspace) or releasing the workspace must not touch what the graph uses."""
    q, k, v = rand(1, 8, 256, 64), rand(1, 8, 256, 64), rand(1, 8, 256, 64)
    graph, out = capture(lambda: sageattn(q, k, v))
    big = rand(2, 16, 8192, 128)
    sageattn(big, big, big)
    sageattention.release_workspace()
    sageattn(big[:, :, :100], big[:, :, :100], big[:, :, :100])
    refill(q, k, v)
    graph.replay()
    torch.cuda.synchronize()
    ref, _ = reference(q, k, v)
    assert rel_l1(out, ref) <= REL_L1_BOUND


def test_graph_of_several_calls_and_sdpa():
    x = rand(2, 4, 128, 64)
    w = rand(64, 64)

    def block():
        q = x @ w
        a = scaled_dot_product_attention(q, x, x, is_causal=True)
        return sageattn(a, x, x)

    graph, out = capture(block)
    for _ in range(2):
        refill(x)
        graph.replay()
        expect = block()
        torch.cuda.synchronize()
        torch.testing.assert_close(out, expect, rtol=1e-3, atol=1e-3)


def test_compile_fullgraph():
    q, k, v = rand(2, 8, 200, 128), rand(2, 2, 300, 128), rand(2, 2, 300, 128)

    def f(q, k, v):
        out, lse = sageattn(q * 1.0, k, v, is_causal=True, return_lse=True, pv_accum="f32")
        return out.float() * 2, lse

    compiled = torch.compile(f, fullgraph=True)
    got, got_lse = compiled(q, k, v)
    want, want_lse = f(q, k, v)
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(got_lse, want_lse, rtol=1e-4, atol=1e-4)


def test_compile_patched_sdpa_module():
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = torch.nn.Linear(256, 3 * 256)

        def forward(self, x):
            b, n, _ = x.shape
            q, k, v = self.qkv(x).view(b, n, 3, 4, 64).permute(2, 0, 3, 1, 4).unbind(0)
            return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, 256)

    block = Block().to(DEV).half().eval()
    x = rand(2, 100, 256)
    original = F.scaled_dot_product_attention
    with torch.no_grad():
        want = block(x)
        try:
            F.scaled_dot_product_attention = scaled_dot_product_attention
            got = torch.compile(block)(x)
            eager = block(x)
        finally:
            F.scaled_dot_product_attention = original
    torch.testing.assert_close(got, eager, rtol=1e-3, atol=1e-3)
    assert rel_l1(got, want) <= REL_L1_BOUND


def test_compile_reduce_overhead():
    """torch.compile's own CUDA graphs (cudagraph trees) around the op."""
    q, k, v = rand(1, 8, 256, 64), rand(1, 8, 256, 64), rand(1, 8, 256, 64)

    def f(q, k, v):
        return sageattn(q, k, v, is_causal=True) + 1

    compiled = torch.compile(f, mode="reduce-overhead", fullgraph=True)
    for _ in range(4):
        refill(q, k, v)
        got = compiled(q, k, v).clone()
        torch.testing.assert_close(got, f(q, k, v), rtol=1e-3, atol=1e-3)


def test_opcheck():
    from sageattention import _torch_ops  # noqa: F401

    op = torch.ops.sageattention_rs.sageattn.default
    q, k, v = rand(1, 4, 77, 64), rand(1, 2, 99, 64), rand(1, 2, 99, 64)
    for args in [
        (q, k, v, "HND", False, None, False, True, "f16", "f16", "auto"),
        (q, k, v, "HND", True, 0.2, True, False, "f32", "f16", "portable"),
    ]:
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


def test_first_use_of_a_kernel_inside_a_capture():
    """Last on purpose: a kernel variant never used before is first called inside a capture
    (module already loaded; the kernel is looked up and configured during the capture)."""
    q, k, v = rand(1, 4, 100, 96, dtype=torch.bfloat16), rand(1, 4, 100, 96, dtype=torch.bfloat16), rand(
        1, 4, 100, 96, dtype=torch.bfloat16
    )
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = sageattn(q, k, v, is_causal=True, pv_accum="f32", backend="portable", smooth_k=False)
    graph.replay()
    torch.cuda.synchronize()
    ref, _ = reference(q, k, v, is_causal=True)
    assert rel_l1(out, ref) <= REL_L1_BOUND
