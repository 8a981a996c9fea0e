"""The torch part: the custom op, its fake (meta) implementation, the zero-copy call into Rust,
and the SDPA fallback rules. Imported on the first call with torch tensors."""

import logging
import operator
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from . import _native

logger = logging.getLogger("sageattention")

# torch's own SDPA (what `torch.nn.functional.scaled_dot_product_attention` is bound to), so that
# the fallback still reaches it when that attribute has been patched to our function.
_TORCH_SDPA = torch._C._nn.scaled_dot_product_attention

SUPPORTED_HEAD_DIMS = tuple(_native.SUPPORTED_HEAD_DIMS)
_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)
_DTYPE_NAMES = {
    torch.float16: "torch.float16",
    torch.bfloat16: "torch.bfloat16",
    torch.float32: "torch.float32",
}
# torch's current stream of a device as a raw handle: the private helper Inductor's generated code
# uses (no Stream object per call), or the public API where it is missing.
_current_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None) or (
    lambda index: torch.cuda.current_stream(index).cuda_stream
)
# The library's stride rule: every stride of a dimension larger than 1 (except the last, which
# must be 1) a multiple of 8 elements, i.e. 16-byte rows for 2-byte types.
_STRIDE_MULTIPLE = 8


def check_tensors(func: str, tensors: Dict[str, object]) -> None:
    """TypeError unless every value is a torch.Tensor."""
    for name, t in tensors.items():
        if not isinstance(t, Tensor):
            kind = type(t)
            raise TypeError(
                f"{func}(): {name} must be a torch.Tensor on a CUDA device, got "
                f"{kind.__module__}.{kind.__qualname__}"
            )


# ---------------------------------------------------------------------------------------------
# The call into Rust
# ---------------------------------------------------------------------------------------------


def _arg(t: Tensor):
    """What crosses into Rust: pointer, dtype, shape, strides, device index (-1: not CUDA)."""
    dtype = _DTYPE_NAMES.get(t.dtype) or str(t.dtype)
    index = t.device.index if t.is_cuda else -1
    return (t.data_ptr(), dtype, t.shape, t.stride(), index)


def _lse_shape(q: Tensor, tensor_layout: str) -> Tuple[int, int, int]:
    if tensor_layout == "NHD":
        return (q.shape[0], q.shape[2], q.shape[1])
    return (q.shape[0], q.shape[1], q.shape[2])


def _layout(func: str, tensor_layout) -> str:
    if not isinstance(tensor_layout, str):
        raise TypeError(f"{func}(): tensor_layout must be a str, got {type(tensor_layout).__name__}")
    layout = tensor_layout.upper()
    if layout not in ("HND", "NHD"):
        raise ValueError(f'tensor_layout must be "HND" or "NHD", got {tensor_layout!r}')
    return layout


def _check_devices(func: str, q: Tensor, k: Tensor, v: Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not t.is_cuda:
            raise ValueError(
                f"{func}(): {name} is on {t.device}; SageAttention runs on CUDA tensors "
                "(scaled_dot_product_attention falls back to torch's for CPU tensors)"
            )
    if not (q.device == k.device == v.device):
        raise ValueError(
            f"{func}(): q, k and v must be on one device, got {q.device}, {k.device}, {v.device}"
        )


def _empty_outputs(q: Tensor, return_lse: bool, lse_shape) -> Tuple[Tensor, Optional[Tensor]]:
    """`out` like `q` and, with `return_lse`, a float32 `lse` of shape `lse_shape()`."""
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = (
        torch.empty(lse_shape(), dtype=torch.float32, device=q.device) if return_lse else None
    )
    return out, lse


def _tensor_args(q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Optional[Tensor]):
    """The leading tensor arguments of the native calls: q, k, v, out and lse (or None)."""
    return (_arg(q), _arg(k), _arg(v), _arg(out), _arg(lse) if lse is not None else None)


def _run(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    tensor_layout: str,
    is_causal: bool,
    sm_scale: Optional[float],
    return_lse: bool,
    smooth_k: bool,
    pv_accum: str,
    pv_precision: str,
    backend: str,
) -> Tuple[Tensor, Optional[Tensor]]:
    """The real implementation: torch allocates, Rust runs on torch's current stream."""
    _check_devices("sageattn", q, k, v)
    out, lse = _empty_outputs(q, return_lse, lambda: _lse_shape(q, tensor_layout))
    _native.attention(
        *_tensor_args(q, k, v, out, lse),
        tensor_layout=tensor_layout,
        is_causal=is_causal,
        sm_scale=sm_scale,
        smooth_k=smooth_k,
        pv_accum=pv_accum,
        pv_precision=pv_precision,
        backend=backend,
        stream=_current_raw_stream(q.device.index),
    )
    return out, lse


# ---------------------------------------------------------------------------------------------
# The custom op (torch.compile, export, tensor subclasses)
# ---------------------------------------------------------------------------------------------


# The arguments of `_run`, in its order; an op returns a fixed number of tensors, so without
# return_lse the second output is empty.
_SCHEMA = (
    "(Tensor q, Tensor k, Tensor v, str tensor_layout, bool is_causal, float? sm_scale, "
    "bool return_lse, bool smooth_k, str pv_accum, str pv_precision, str backend) -> (Tensor, Tensor)"
)


def _no_lse(q: Tensor) -> Tensor:
    return q.new_empty((0,), dtype=torch.float32)


def _op_impl(*args) -> Tuple[Tensor, Tensor]:
    out, lse = _run(*args)
    return out, (_no_lse(args[0]) if lse is None else lse)


_sageattn_op = torch.library.custom_op(
    "sageattention_rs::sageattn", _op_impl, mutates_args=(), schema=_SCHEMA
)


@_sageattn_op.register_fake
def _sageattn_fake(q, k, v, tensor_layout, is_causal, sm_scale, return_lse, *_options):
    lse_shape = _lse_shape(q, tensor_layout) if return_lse else (0,)
    return q.new_empty(q.shape), q.new_empty(lse_shape, dtype=torch.float32)


def _through_op(*tensors: Tensor) -> bool:
    """Eager calls on plain tensors go straight to Rust (no dispatcher overhead); tracing
    (torch.compile, export) and tensor subclasses (fake, functional, ...) go through the op."""
    if torch.compiler.is_compiling():
        return True
    return any(type(t) is not Tensor for t in tensors)


def _attention(*args) -> Tuple[Tensor, Optional[Tensor]]:
    """(q, k, v, tensor_layout, is_causal, sm_scale, return_lse, smooth_k, pv_accum,
    pv_precision, backend), as the op takes them."""
    if _through_op(*args[:3]):
        out, lse = _sageattn_op(*args)
        return out, (lse if args[6] else None)
    return _run(*args)


def _scale(func: str, value) -> Optional[float]:
    if value is None:
        return None
    if not isinstance(value, bool):
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    raise TypeError(
        f"{func}(): the softmax scale must be a number or None, got {type(value).__name__}"
    )


def sageattn(q, k, v, tensor_layout, is_causal, sm_scale, return_lse, smooth_k, options):
    layout = _layout("sageattn", tensor_layout)
    out, lse = _attention(
        q,
        k,
        v,
        layout,
        bool(is_causal),
        _scale("sageattn", sm_scale),
        bool(return_lse),
        bool(smooth_k),
        options["pv_accum"],
        options["pv_precision"],
        options["backend"],
    )
    return (out, lse) if return_lse else out


# ---------------------------------------------------------------------------------------------
# sageattn_varlen: packed sequences
# ---------------------------------------------------------------------------------------------

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


def _cu_seqlens(name: str, t) -> Tuple[int, ...]:
    """The prefix sums as host ints: a 1-d int32 or int64 tensor, on any device. A CUDA tensor is
    copied synchronously (ordered after the work torch queued on its stream); the per-sequence
    call needs the lengths on the host anyway."""
    if not isinstance(t, Tensor):
        kind = type(t)
        raise TypeError(
            f"sageattn_varlen(): {name} must be a torch.Tensor of dtype torch.int32, got "
            f"{kind.__module__}.{kind.__qualname__}"
        )
    if t.dtype not in (torch.int32, torch.int64):
        raise TypeError(
            f"sageattn_varlen(): {name} has dtype {t.dtype}; cu_seqlens must be torch.int32 "
            "(or torch.int64)"
        )
    if t.dim() != 1:
        raise ValueError(
            f"sageattn_varlen(): {name} must be 1-d, [batch + 1], got shape {tuple(t.shape)}"
        )
    host = t.detach().to("cpu")
    if host.dtype == torch.int64 and host.numel() > 0:
        low, high = int(host.min()), int(host.max())
        if low < _INT32_MIN or high > _INT32_MAX:
            raise ValueError(
                f"sageattn_varlen(): {name} holds {low if low < _INT32_MIN else high}, outside "
                "int32"
            )
    return tuple(host.to(torch.int32).tolist())


def _max_seqlen(name: str, value) -> int:
    if isinstance(value, bool):
        raise TypeError(f"sageattn_varlen(): {name} must be an int, got bool")
    if isinstance(value, Tensor) and value.numel() == 1 and not value.is_floating_point():
        value = int(value)
    try:
        n = operator.index(value)
    except TypeError:
        raise TypeError(
            f"sageattn_varlen(): {name} must be an int, got {type(value).__name__}"
        ) from None
    if n < 0:
        raise ValueError(f"sageattn_varlen(): {name} must be >= 0, got {n}")
    return n


def _packed_lse_shape(q: Tensor) -> Tuple[int, int]:
    return (q.shape[1], q.shape[0])


def _run_varlen(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens_q: Tensor,
    cu_seqlens_k: Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    is_causal: bool,
    sm_scale: Optional[float],
    return_lse: bool,
    smooth_k: bool,
    pv_accum: str,
    pv_precision: str,
    backend: str,
) -> Tuple[Tensor, Optional[Tensor]]:
    """The real implementation: torch allocates, Rust runs on torch's current stream."""
    cu_q = _cu_seqlens("cu_seqlens_q", cu_seqlens_q)
    cu_k = _cu_seqlens("cu_seqlens_k", cu_seqlens_k)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 3:
            raise ValueError(
                f"sageattn_varlen(): {name} must be 3-d, [total, heads, head_dim], got shape "
                f"{tuple(t.shape)}"
            )
    _check_devices("sageattn_varlen", q, k, v)
    out, lse = _empty_outputs(q, return_lse, lambda: _packed_lse_shape(q))
    _native.attention_varlen(
        *_tensor_args(q, k, v, out, lse),
        cu_q,
        cu_k,
        max_seqlen_q,
        max_seqlen_k,
        tensor_layout="NHD",
        is_causal=is_causal,
        sm_scale=sm_scale,
        smooth_k=smooth_k,
        pv_accum=pv_accum,
        pv_precision=pv_precision,
        backend=backend,
        stream=_current_raw_stream(q.device.index),
    )
    return out, lse


_VARLEN_SCHEMA = (
    "(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens_q, Tensor cu_seqlens_k, int max_seqlen_q, "
    "int max_seqlen_k, bool is_causal, float? sm_scale, bool return_lse, bool smooth_k, "
    "str pv_accum, str pv_precision, str backend) -> (Tensor, Tensor)"
)


def _varlen_op_impl(*args) -> Tuple[Tensor, Tensor]:
    out, lse = _run_varlen(*args)
    return out, (_no_lse(args[0]) if lse is None else lse)


_sageattn_varlen_op = torch.library.custom_op(
    "sageattention_rs::sageattn_varlen", _varlen_op_impl, mutates_args=(), schema=_VARLEN_SCHEMA
)


@_sageattn_varlen_op.register_fake
def _sageattn_varlen_fake(q, k, v, cu_q, cu_k, max_q, max_k, is_causal, sm_scale, return_lse,
                          *_options):
    lse_shape = _packed_lse_shape(q) if return_lse else (0,)
    return q.new_empty(q.shape), q.new_empty(lse_shape, dtype=torch.float32)


def sageattn_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, is_causal,
                    sm_scale, return_lse, smooth_k, options):
    args = (
        q,
        k,
        v,
        cu_seqlens_q,
        cu_seqlens_k,
        _max_seqlen("max_seqlen_q", max_seqlen_q),
        _max_seqlen("max_seqlen_k", max_seqlen_k),
        bool(is_causal),
        _scale("sageattn_varlen", sm_scale),
        bool(return_lse),
        bool(smooth_k),
        options["pv_accum"],
        options["pv_precision"],
        options["backend"],
    )
    if _through_op(q, k, v):
        out, lse = _sageattn_varlen_op(*args)
        lse = lse if return_lse else None
    else:
        out, lse = _run_varlen(*args)
    return (out, lse) if return_lse else out


# ---------------------------------------------------------------------------------------------
# scaled_dot_product_attention
# ---------------------------------------------------------------------------------------------

_logged_reasons = set()
_capabilities: Dict[int, Tuple[int, int]] = {}


def _capability(index: int) -> Tuple[int, int]:
    cc = _capabilities.get(index)
    if cc is None:
        cc = tuple(torch.cuda.get_device_capability(index))
        _capabilities[index] = cc
    return cc


def _strides_ok(t: Tensor) -> bool:
    if t.stride(-1) != 1:
        return False
    if t.storage_offset() % _STRIDE_MULTIPLE != 0:
        return False
    return all(n == 1 or s % _STRIDE_MULTIPLE == 0 for n, s in zip(t.shape[:-1], t.stride()[:-1]))


def fallback_reason(
    q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, enable_gqa=False
) -> Optional[Tuple[str, str]]:
    """Why ``scaled_dot_product_attention`` cannot take this library's path: ``(key, message)``,
    or None when it can."""
    if attn_mask is not None:
        return "attn_mask", "an attn_mask is given (not supported)"
    if dropout_p != 0.0:
        return "dropout", f"dropout_p = {dropout_p} (not supported)"
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return "autograd", "an input requires grad (the kernel has no backward)"
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return "ndim", f"inputs are {q.dim()}-d/{k.dim()}-d/{v.dim()}-d (needs 4-d)"
    if q.dtype not in _SUPPORTED_DTYPES or not (q.dtype == k.dtype == v.dtype):
        return "dtype", f"dtypes {q.dtype}/{k.dtype}/{v.dtype} (needs float16 or bfloat16)"
    d = q.shape[-1]
    if d not in SUPPORTED_HEAD_DIMS or k.shape[-1] != d or v.shape[-1] != d:
        return "head_dim", (
            f"head dims {d}/{k.shape[-1]}/{v.shape[-1]} "
            "(needs a multiple of 8 from 8 to 256 for all three)"
        )
    b, hq, L, _ = q.shape
    if k.shape != v.shape or k.shape[0] != b:
        return "shape", f"shapes {tuple(q.shape)}/{tuple(k.shape)}/{tuple(v.shape)} do not match"
    hk, S = k.shape[1], k.shape[2]
    if hq != hk and not (enable_gqa and hk > 0 and hq % hk == 0):
        return "heads", f"{hq} query heads and {hk} key/value heads (enable_gqa={enable_gqa})"
    if q.numel() == 0 or k.numel() == 0:
        return "empty", "an input is empty"
    if is_causal and L != S:
        return "causal", (
            f"is_causal with {L} queries and {S} keys (torch aligns the mask top-left, this "
            "library bottom-right)"
        )
    if not (_strides_ok(q) and _strides_ok(k) and _strides_ok(v)):
        return "strides", (
            f"strides {q.stride()}/{k.stride()}/{v.stride()} (needs a contiguous last dimension "
            "and the others multiples of 8 elements)"
        )
    if not (q.is_cuda and k.is_cuda and v.is_cuda):
        return "device", f"inputs on {q.device}/{k.device}/{v.device} (needs CUDA)"
    if not (q.device == k.device == v.device):
        return "device", f"inputs on different devices {q.device}/{k.device}/{v.device}"
    if _capability(q.device.index) < (8, 0):
        major, minor = _capability(q.device.index)
        return "gpu", f"{torch.cuda.get_device_name(q.device)} is sm_{major}{minor} (needs sm_80+)"
    return None


def _log_fallback(key: str, message: str) -> None:
    if key in _logged_reasons:
        return
    _logged_reasons.add(key)
    logger.warning(
        "sageattention: scaled_dot_product_attention falls back to torch's: %s "
        "(logged once per reason)",
        message,
    )


def scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa):
    reason = fallback_reason(q, k, v, attn_mask, dropout_p, is_causal, enable_gqa)
    if reason is not None:
        if not torch.compiler.is_compiling():
            _log_fallback(*reason)
        extra = {"enable_gqa": True} if enable_gqa else {}
        return _TORCH_SDPA(
            q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
            **extra,
        )
    out, _ = _attention(
        q,
        k,
        v,
        "HND",
        bool(is_causal),
        _scale("scaled_dot_product_attention", scale),
        False,
        True,
        "f16",
        "f16",
        "auto",
    )
    return out

