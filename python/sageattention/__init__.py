"""SageAttention in pure Rust, for PyTorch.

Attention with Q·Kᵀ in INT8 (K smoothed by its mean) and P·V in FP16, for NVIDIA GPUs of compute
capability 8.0 and newer; no CUDA toolkit, no compiler, and no link to torch: one wheel serves
every torch version.

Three entry points:

* :func:`sageattn` — the official SageAttention signature and return convention
  (``from sageattention import sageattn``);
* :func:`sageattn_varlen` — the official signature for sequences of different lengths packed
  into one tensor (``cu_seqlens`` prefix sums, as FlashAttention's varlen functions);
* :func:`scaled_dot_product_attention` — torch's signature; takes this library's path when it
  can and falls back to ``torch.nn.functional.scaled_dot_product_attention`` otherwise (mask,
  dropout, head_dim, dtype, CPU tensors, GPUs below sm_80, autograd), logging each reason once.

torch is imported only when a function is called with torch tensors; importing this package
needs nothing but the wheel.
"""

from ._api import release_workspace, sageattn, sageattn_varlen, scaled_dot_product_attention
from ._native import SUPPORTED_HEAD_DIMS, __version__

__all__ = [
    "SUPPORTED_HEAD_DIMS",
    "__version__",
    "release_workspace",
    "sageattn",
    "sageattn_varlen",
    "scaled_dot_product_attention",
]
