"""Real clients written by others: a randomly initialised transformers Llama-style model through
transformers' attention-function registry, and a timm ViT with F.scaled_dot_product_attention
patched. Each is compared with the same model on torch's SDPA.

Bound: relative L1 error of the logits/features <= REL_L1_BOUND (0.03, the per-call bound of the
kernel tests) and cosine similarity >= 0.999. Attention is one summand of each block's residual
stream, and randomly initialised blocks are close to isometric, so the end-to-end error stays at
or below the error of one attention call; a wrong head mapping, mask or stale input would exceed
it by an order of magnitude. Each test also asserts that our kernel actually ran (no silent
fallback), and prints the measured error next to torch-SDPA-float16's own error against float32.
"""

import contextlib

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402

import sageattention  # noqa: E402
from sageattention import _torch_ops  # noqa: E402

from conftest import REL_L1_BOUND, cos_sim, rel_l1, requires_gpu  # noqa: E402

pytestmark = [pytest.mark.gpu, requires_gpu]

DEV = "cuda"


@contextlib.contextmanager
def count_our_calls():
    """Counts calls that reach the kernel (not torch's fallback)."""
    calls = []
    real_run = _torch_ops._run

    def counting(*args):
        calls.append(tuple(args[0].shape))
        return real_run(*args)

    _torch_ops._run = counting
    try:
        yield calls
    finally:
        _torch_ops._run = real_run


@contextlib.contextmanager
def patched_sdpa():
    original = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = sageattention.scaled_dot_product_attention
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def report(name, ours, sdpa, fp32):
    err, base = rel_l1(ours.float(), sdpa.float()), rel_l1(sdpa.float(), fp32.float())
    cos = cos_sim(ours, sdpa)
    print(
        f"\n{name}: rel L1 ours vs SDPA {err:.2e} (bound {REL_L1_BOUND}), cos {cos:.6f}; "
        f"SDPA f16 vs f32 {base:.2e}"
    )
    assert err <= REL_L1_BOUND
    assert cos >= 0.999


# --- transformers ----------------------------------------------------------------------------------


def sage_attention_forward(
    module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs
):
    """An attention function for transformers' AttentionInterface: query [b, h, L, d], key/value
    [b, h_kv, S, d]; returns ([b, L, h, d], None) like transformers' own SDPA function."""
    if is_causal is None:
        is_causal = getattr(module, "is_causal", True)
    # As transformers' SDPA function: causal only when there is no explicit mask and more than one
    # query (a single decoding query sees the whole cache).
    is_causal = query.shape[2] > 1 and attention_mask is None and is_causal
    out = sageattention.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attention_mask,
        dropout_p=dropout,
        is_causal=is_causal,
        scale=scaling,
        enable_gqa=query.shape[1] != key.shape[1],
    )
    return out.transpose(1, 2).contiguous(), None


def test_transformers_llama():
    transformers = pytest.importorskip("transformers")
    try:
        from transformers import AttentionInterface, LlamaConfig, LlamaForCausalLM
    except ImportError:
        pytest.skip(f"transformers {transformers.__version__} has no AttentionInterface (4.48+)")

    AttentionInterface.register("sageattention", sage_attention_forward)
    try:  # transformers >= 4.53 chooses the mask builder by implementation name too
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionMaskInterface.register("sageattention", sdpa_mask)
    except ImportError:
        pass

    config = LlamaConfig(
        vocab_size=1000,
        hidden_size=512,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=8,  # head_dim 64
        num_key_value_heads=2,  # GQA
        max_position_embeddings=1024,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(DEV).eval()
    ids = torch.randint(0, config.vocab_size, (2, 301), device=DEV)
    next_ids = torch.randint(0, config.vocab_size, (2, 1), device=DEV)

    def run(implementation):
        model.config._attn_implementation = implementation
        out = model(ids, use_cache=True)
        step = model(next_ids, past_key_values=out.past_key_values, use_cache=True)
        return out.logits, step.logits

    with torch.no_grad():
        fp32 = run("sdpa")
        model.half()
        sdpa = run("sdpa")
        with count_our_calls() as calls:
            ours = run("sageattention")
    print(f"transformers {transformers.__version__}: {len(calls)} kernel calls, shapes {sorted(set(calls))}")
    # prefill (causal, 301 tokens) and one decoding step (1 query, 302 keys) in each of 4 layers
    assert len(calls) == 2 * config.num_hidden_layers, calls
    report("llama prefill logits", ours[0], sdpa[0], fp32[0])
    report("llama decode-step logits", ours[1], sdpa[1], fp32[1])


# --- timm ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["vit_small_patch16_224", "vit_base_patch16_224"])
def test_timm_vit(name):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).to(DEV).eval()
    x = torch.randn(4, 3, 224, 224, device=DEV)
    with torch.no_grad():
        fp32 = model.forward_features(x)
        model.to(torch.bfloat16)
        xb = x.to(torch.bfloat16)
        sdpa = model.forward_features(xb)
        with patched_sdpa(), count_our_calls() as calls:
            ours = model.forward_features(xb)
            logits = model.forward_head(ours)
        want_logits = model.forward_head(sdpa)
    print(f"timm {timm.__version__} {name}: {len(calls)} kernel calls, shapes {sorted(set(calls))}")
    assert len(calls) == len(model.blocks), calls  # every block's attention ran our kernel
    report(f"{name} features", ours, sdpa, fp32)
    report(f"{name} logits", logits, want_logits, model.float().forward_head(fp32))
