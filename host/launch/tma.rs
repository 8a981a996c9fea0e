//! TMA descriptors (`CUtensorMap`) of the sm_90a kernels' K and V tiles: one thread of the CTA
//! copies each tile with `cp.async.bulk.tensor`, which swizzles it into the layouts the wgmmas
//! read (`kernels-gpu/src/hopper/smem.rs`), instead of every thread issuing 16-byte copies with
//! their address arithmetic. The 8-bit P·V reads its INT8 K and Vᵀ this way always; the f16 P·V
//! (d = 64, 128, 256) its INT8 K and the caller's f16 V whenever TMA can describe that V (16-byte
//! aligned base and strides), else the kernel falls back to per-thread copies. Encoding is a host-only
//! driver call; the descriptors then go to the call's scratch memory (`ScratchLayout::tma`) with
//! a stream-ordered copy, and the kernel gets their address (`AttnParams::tma`). (Kernel
//! parameters would save the copy, but rustc's nvptx64 calling convention cannot give a
//! parameter the 64-byte alignment a descriptor needs.)

use cudarc::driver::sys::{
    cuTensorMapEncodeTiled, CUtensorMap, CUtensorMapDataType, CUtensorMapFloatOOBfill,
    CUtensorMapInterleave, CUtensorMapL2promotion, CUtensorMapSwizzle,
};
use cudarc::driver::DriverError;

use crate::types::error::{Error, Result};

/// Bytes of the two descriptors (K, then Vᵀ).
pub(crate) const TMA_MAPS_BYTES: usize = 256;

/// The K and Vᵀ descriptors, in the order the kernel reads them.
pub(crate) type TmaMaps = [u64; TMA_MAPS_BYTES / 8];

/// Keys of one K box: a whole 128-key tile, or at d = 256, whose 128-key tile is stored as two
/// 64-key tiles of two column blocks each, one of those 64-key blocks.
const fn pv8_k_box_keys(head_dim: usize) -> u32 {
    if head_dim > 128 {
        64
    } else {
        128
    }
}
/// Keys of one Vᵀ box (a 64-key sub-tile; a tile is two).
const V_BOX_KEYS: u32 = 64;

/// The descriptors of the INT8 K `[heads][padded_k][head_dim]` at `k` and the INT8 Vᵀ
/// `[heads][head_dim][padded_k]` at `vt` (`heads` = batch · kv_heads). `head_dim` is 64, 128 or 256
/// and `padded_k` a multiple of 64, so every stride is a multiple of 16 bytes as TMA needs; keys
/// past `padded_k` read as zeros.
pub(crate) fn pv8_tensor_maps(
    k: u64,
    vt: u64,
    heads: usize,
    padded_k: usize,
    head_dim: usize,
) -> Result<TmaMaps> {
    let no_layout = || {
        Error::InvalidOption(format!(
            "no TMA layout for the 8-bit P·V at head_dim {head_dim}"
        ))
    };
    if !matches!(head_dim, 64 | 128 | 256) {
        return Err(no_layout());
    }
    let failed = |what: &'static str| {
        move |source| Error::Cuda {
            op: format!("encoding the TMA descriptor of the 8-bit P·V {what}"),
            source,
        }
    };
    let k_map = k_map(k, heads, padded_k, head_dim, pv8_k_box_keys(head_dim))
        .ok_or_else(no_layout)?
        .map_err(failed("K"))?;
    let (d, n, h) = (head_dim as u64, padded_k as u64, heads as u64);
    let v_map = encode(
        CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_UINT8,
        vt,
        &[n, d, h],
        &[n, n * d],
        &[V_BOX_KEYS, head_dim as u32, 1],
        CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_64B,
    )
    .map_err(failed("Vᵀ"))?;
    Ok(pack(&k_map, &v_map))
}

/// The descriptors of the INT8 K `[heads][padded_k][head_dim]` at `k` (boxes of 64 keys ×
/// 128 bytes, or 64 at d = 64) and of the f16 V at `v` with element strides `v_stride` (batch,
/// head, seq; boxes of 64 keys × 64 channels, 128-byte swizzle), for the f16 P·V kernel; `None`
/// when the head dim has no TMA layout (96) or the driver cannot describe V (a stride or the base
/// not 16-byte aligned, a broadcast stride): the kernel then copies with cp.async.
#[allow(clippy::too_many_arguments)]
pub(crate) fn f16_tensor_maps(
    k: u64,
    v: u64,
    v_stride: [i64; 3],
    batch: usize,
    kv_heads: usize,
    kv_len: usize,
    padded_k: usize,
    head_dim: usize,
) -> Option<TmaMaps> {
    let bytes = |s: i64| u64::try_from(s).ok().filter(|&b| b > 0).map(|b| 2 * b);
    let [vb, vh, vs] = [
        bytes(v_stride[0])?,
        bytes(v_stride[1])?,
        bytes(v_stride[2])?,
    ];
    if !v.is_multiple_of(16) || [vb, vh, vs].iter().any(|s| !s.is_multiple_of(16)) {
        return None;
    }
    let k_map = k_map(k, batch * kv_heads, padded_k, head_dim, 64)?.ok()?;
    let v_map = encode(
        CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
        v,
        &[
            head_dim as u64,
            kv_len as u64,
            kv_heads as u64,
            batch as u64,
        ],
        &[vs, vh, vb],
        &[64, 64, 1, 1],
        CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
    )
    .ok()?;
    Some(pack(&k_map, &v_map))
}

/// The descriptor of the INT8 K `[heads][padded_k][head_dim]` at `k`: boxes of `box_keys` keys ×
/// 128 bytes (d = 256: one of its two column blocks) with the 128-byte swizzle, or × 64 bytes with
/// the 64-byte one at d = 64, the kernels' K-major layouts (`smem::kmajor_offset`). `None` for a
/// head dim without such a layout.
fn k_map(
    k: u64,
    heads: usize,
    padded_k: usize,
    head_dim: usize,
    box_keys: u32,
) -> Option<std::result::Result<CUtensorMap, DriverError>> {
    let swizzle = match head_dim {
        128 | 256 => CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
        64 => CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_64B,
        _ => return None,
    };
    let (d, n) = (head_dim as u64, padded_k as u64);
    Some(encode(
        CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_UINT8,
        k,
        &[d, n, heads as u64],
        &[d, n * d],
        &[head_dim.min(128) as u32, box_keys, 1],
        swizzle,
    ))
}

/// The two descriptors in the kernel's order.
fn pack(k: &CUtensorMap, v: &CUtensorMap) -> TmaMaps {
    let mut maps = [0u64; TMA_MAPS_BYTES / 8];
    maps[..16].copy_from_slice(&k.opaque);
    maps[16..].copy_from_slice(&v.opaque);
    maps
}

/// A tiled descriptor of rank `dims.len()` (3 or 4): `dims` innermost first, `strides` in bytes
/// of dims 1.., `boxes` the box per dim.
fn encode(
    dtype: CUtensorMapDataType,
    base: u64,
    dims: &[u64],
    strides: &[u64],
    boxes: &[u32],
    swizzle: CUtensorMapSwizzle,
) -> std::result::Result<CUtensorMap, DriverError> {
    assert!(strides.len() + 1 == dims.len() && boxes.len() == dims.len() && dims.len() <= 5);
    let mut map = CUtensorMap { opaque: [0; 16] };
    let element_strides = [1u32; 5];
    // SAFETY: every pointer refers to a live local array of at least the rank's length (checked
    // above); the call only writes `map`. `base` is a device address the driver checks, never
    // dereferenced on the host.
    let status = unsafe {
        cuTensorMapEncodeTiled(
            &mut map,
            dtype,
            dims.len() as u32,
            base as *mut core::ffi::c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            element_strides.as_ptr(),
            CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            swizzle,
            CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    };
    status.result()?;
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_dims_without_a_tma_layout_are_refused_before_the_driver() {
        for hd in [32, 96, 160] {
            let err = pv8_tensor_maps(0x1000, 0x2000, 4, 1024, hd).unwrap_err();
            assert!(matches!(err, Error::InvalidOption(_)), "{hd}: {err}");
        }
    }

    #[test]
    fn f16_maps_fall_back_before_the_driver_when_tma_cannot_describe_v() {
        let maps = |v: u64, stride: [i64; 3], hd: usize| {
            f16_tensor_maps(0x1000, v, stride, 2, 4, 1000, 1024, hd)
        };
        let contiguous = [4 * 1000 * 128, 1000 * 128, 128];
        // d = 96 keeps its own copy path; a broadcast or negative stride, a stride or base not a
        // multiple of 16 bytes cannot be described.
        assert!(maps(0x2000, contiguous, 96).is_none());
        assert!(maps(0x2000, [0, 1000 * 128, 128], 128).is_none());
        assert!(maps(0x2000, [-1, 1000 * 128, 128], 128).is_none());
        assert!(maps(0x2000, [4 * 1000 * 132, 1000 * 132, 132], 128).is_none());
        assert!(maps(0x2008, contiguous, 128).is_none());
    }
}
