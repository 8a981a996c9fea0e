"""The public calls, free of torch: argument checks that need no tensor library, then the torch
part (``_torch_ops``), imported on the first call with torch tensors."""

import sys
from typing import Any, Dict, Optional

from . import _native

# Our own keyword arguments of `sageattn`, with their defaults (all strings; the Rust side
# `args.rs` parses them, so the accepted values are listed once). A new one goes here, in the op's
# schema (`_torch_ops`) and in `args::Keywords`.
OUR_KEYWORDS: Dict[str, str] = {
    "pv_accum": "f16",  # "f16": FP16 accumulator per key tile (SageAttention's default); "f32"
    "pv_precision": "f16",  # "f16"; "int8": 8-bit P·V (u8 P × s8 V), any sm_80+ GPU; "fp8": e4m3, sm_89+
    "backend": "auto",  # "auto": the fastest kernel for the GPU; "portable": the mma.sync kernel
}

_torch_ops = None


def _keywords(func: str, kwargs: Dict[str, Any]) -> Dict[str, str]:
    """Our keywords with defaults filled in; TypeError for anything else."""
    unknown = sorted(set(kwargs) - set(OUR_KEYWORDS))
    if unknown:
        raise TypeError(
            f"{func}() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}; "
            f"accepted beyond the official ones: {', '.join(OUR_KEYWORDS)}"
        )
    out = dict(OUR_KEYWORDS)
    for name, value in kwargs.items():
        if not isinstance(value, str):
            raise TypeError(f"{func}(): {name} must be a str, got {type(value).__name__}")
        out[name] = value
    return out


def _ops_for(func: str, **tensors: Any):
    """The torch part, after checking that the inputs are torch tensors (TypeError otherwise)."""
    global _torch_ops
    if _torch_ops is None:
        # If torch was never imported, nothing can be a torch tensor: no import needed to say so.
        torch = sys.modules.get("torch")
        if torch is None:
            for name, t in tensors.items():
                _not_a_tensor(func, name, t)
        from . import _torch_ops as ops

        _torch_ops = ops
    _torch_ops.check_tensors(func, tensors)
    return _torch_ops


def _not_a_tensor(func: str, name: str, value: Any) -> None:
    kind = type(value)
    raise TypeError(
        f"{func}(): {name} must be a torch.Tensor on a CUDA device, got "
        f"{kind.__module__}.{kind.__qualname__}"
    )


def sageattn(
    q,
    k,
    v,
    tensor_layout: str = "HND",
    is_causal: bool = False,
    sm_scale: Optional[float] = None,
    return_lse: bool = False,
    smooth_k: bool = True,
    **kwargs: Any,
):
    """SageAttention with the official signature.

    Parameters
    ----------
    q, k, v : torch.Tensor
        float16 or bfloat16 (all three the same), on one CUDA device, head_dim a multiple of 8
        from 8 to 256;
        ``[batch, heads, seq, head_dim]`` for ``tensor_layout="HND"``,
        ``[batch, seq, heads, head_dim]`` for ``"NHD"``. Any strides with a contiguous last
        dimension and 16-byte aligned rows; k and v may have fewer heads than q (GQA/MQA, q's
        heads a multiple of k's) and another length.
    tensor_layout : "HND" or "NHD".
    is_causal : causal mask, bottom-right aligned when ``qo_len != kv_len`` (as FlashAttention
        2.1+: query i sees key j iff ``j <= i + kv_len - qo_len``); the official package is only
        defined for ``qo_len == kv_len``, where the two agree.
    sm_scale : softmax scale, default ``1/sqrt(head_dim)``.
    return_lse : also return the natural-log log-sum-exp of each query row, float32
        ``[batch, q_heads, qo_len]``.
    smooth_k : subtract K's mean over the sequence before quantizing (exact for softmax, smaller
        INT8 error).
    pv_accum : keyword, "f16" (default) or "f32" accumulation of P·V. "f16" sums each key tile in
        f16 on the portable kernel (every GPU but Hopper with backend="auto"): one pass for
        every ``|v| <= 1023``; past that, query rows whose tile sums overflow run again with
        their probabilities lowered by 2^-7 (finite for every f16 V, about twice the cost for
        those rows; "f32" avoids both).
    pv_precision : keyword, "f16" (default) or "int8": 8-bit P·V (u8 P × s8 V on the INT8 tensor
        cores, SageAttention2's speed class, rel L1 about 0.015 on N(0,1) inputs against 0.011
        for "f16"), head_dim a multiple of 16 up to 256, on the wgmma kernel (Hopper) and on the
        portable mma.sync kernel (any other sm_80+ GPU, or backend="portable"); or "fp8": e4m3 P ×
        e4m3 V (SageAttention2's FP8 P·V; compute capability 8.9+: on Hopper the wgmma kernel,
        the official SageAttention 2.2 sm90 algorithm, f32 per key tile; on Ada, or with
        backend="portable", the mma.sync kernel, where pv_accum picks the accumulator of each key
        tile; rel L1 about 0.036 on N(0,1), less accurate than "int8").
    backend : keyword, "auto" (default) or "portable" (forces the mma.sync kernel on Hopper).

    Returns
    -------
    The output, shaped and laid out like q (a new contiguous tensor of q's dtype), or
    ``(output, lse)`` with ``return_lse=True``.

    Raises TypeError (types, dtypes, unknown keywords), ValueError (shapes, strides, devices,
    options) or RuntimeError (driver, device), with the library's message. Inference only: the
    output has no autograd history. Works under CUDA graph capture and ``torch.compile`` (a torch
    custom op, ``torch.ops.sageattention_rs.sageattn``).
    """
    options = _keywords("sageattn", kwargs)
    ops = _ops_for("sageattn", q=q, k=k, v=v)
    return ops.sageattn(
        q, k, v, tensor_layout, is_causal, sm_scale, return_lse, smooth_k, options
    )


def sageattn_varlen(
    q,
    k,
    v,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q: int,
    max_seqlen_k: int,
    is_causal: bool = False,
    sm_scale: Optional[float] = None,
    smooth_k: bool = True,
    **kwargs: Any,
):
    """SageAttention over sequences of different lengths packed into one tensor, with the
    official ``sageattn_varlen`` signature (FlashAttention's ``flash_attn_varlen_func`` layout).

    Parameters
    ----------
    q : torch.Tensor
        ``[total_q, q_heads, head_dim]``: the query rows of every sequence one after the other.
    k, v : torch.Tensor
        ``[total_k, kv_heads, head_dim]``; q's heads a multiple of k's (GQA/MQA). float16 or
        bfloat16 (all three the same), head_dim a multiple of 8 from 8 to 256, on one CUDA
        device; any strides with a contiguous last dimension and 16-byte aligned rows (slices of
        a fused qkv work).
    cu_seqlens_q, cu_seqlens_k : torch.Tensor
        int32 (or int64) prefix sums, ``[batch + 1]``: sequence ``i`` is q rows
        ``cu_seqlens_q[i]:cu_seqlens_q[i + 1]`` and k/v rows ``cu_seqlens_k[i]:cu_seqlens_k[i + 1]``.
        On the GPU or the CPU; a GPU tensor is read back synchronously (the lengths are needed on
        the host).
    max_seqlen_q, max_seqlen_k : int
        The longest sequence allowed in each; a longer one is a ValueError.
    is_causal : causal mask within each sequence, bottom-right aligned (query i of a sequence sees
        key j iff ``j <= i + kv_len - qo_len``: chunked prefill against a longer context masks
        correctly); the official package defines only ``qo_len == kv_len``, where both agree.
    sm_scale : softmax scale, default ``1/sqrt(head_dim)``.
    smooth_k : subtract K's mean before quantizing, **per sequence** (the official package takes
        the mean over all packed tokens at once).
    return_lse : keyword (ours), default False: also return the natural-log log-sum-exp of each
        query row, float32 ``[q_heads, total_q]`` (``-inf`` for rows that see no key).
    pv_accum, pv_precision, backend : keywords, as for :func:`sageattn`.

    Returns
    -------
    The output ``[total_q, q_heads, head_dim]`` (a new contiguous tensor of q's dtype), or
    ``(output, lse)`` with ``return_lse=True``. Empty sequences are allowed: queries without
    keys give 0.

    Raises TypeError, ValueError (shapes, strides, devices, every bad ``cu_seqlens``: not
    starting at 0, decreasing, not ending at the row count, batch sizes that differ, a length
    above its ``max_seqlen``) or RuntimeError, with the library's message. Today it runs one
    batched call per run of consecutive sequences with equal lengths, so packed equal lengths
    cost a batched call, and one call per sequence otherwise (fine for a few long sequences;
    launch-bound with many short ones), the calls running concurrently on up to 4 streams so
    that short sequences overlap long ones; it cannot be captured in a CUDA graph. Works under ``torch.compile`` as the custom op
    ``torch.ops.sageattention_rs.sageattn_varlen``.
    """
    return_lse = kwargs.pop("return_lse", False)
    if not isinstance(return_lse, bool):
        raise TypeError(
            f"sageattn_varlen(): return_lse must be a bool, got {type(return_lse).__name__}"
        )
    options = _keywords("sageattn_varlen", kwargs)
    ops = _ops_for("sageattn_varlen", q=q, k=k, v=v)
    return ops.sageattn_varlen(
        q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, is_causal, sm_scale,
        return_lse, smooth_k, options,
    )


def scaled_dot_product_attention(
    query,
    key,
    value,
    attn_mask=None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: Optional[float] = None,
    enable_gqa: bool = False,
):
    """``torch.nn.functional.scaled_dot_product_attention``, with this library's kernel when it
    applies.

    Our path needs: 4-d float16/bfloat16 CUDA tensors on one device of compute capability 8.0+,
    head_dim a multiple of 8 from 8 to 256 (the same for q, k and v), no ``attn_mask``,
    ``dropout_p == 0``, ``is_causal`` only with equal query and key lengths (torch aligns the
    mask top-left, this library bottom-right), k/v heads equal to q's (or dividing them with
    ``enable_gqa=True``), strides the kernels take (contiguous last dimension, 16-byte rows), and
    no input that requires grad while autograd is on (the kernel has no backward). Anything else runs torch's
    own function unchanged; each reason is logged once (logger ``sageattention``, WARNING).
    """
    ops = _ops_for("scaled_dot_product_attention", query=query, key=key, value=value)
    return ops.scaled_dot_product_attention(
        query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa
    )


def release_workspace(device=None) -> None:
    """Frees the scratch memory this library keeps between calls on a CUDA device (all devices
    it used when ``device`` is None). torch's ``torch.cuda.empty_cache()`` does not see it."""
    if device is None:
        indices = range(_device_count())
    elif isinstance(device, int):
        indices = [device]
    else:
        index = getattr(device, "index", None)
        if index is None and isinstance(device, str) and device.startswith("cuda"):
            index = int(device.partition(":")[2] or 0)
        if index is None:
            raise ValueError(f"release_workspace(): not a CUDA device: {device!r}")
        indices = [index]
    for i in indices:
        _native.release_workspace(i)


def _device_count() -> int:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return torch.cuda.device_count()
    return 0
