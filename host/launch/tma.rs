//! TMA descriptors (`CUtensorMap`) of the sm_90a 8-bit P·V kernels' K and Vᵀ tiles: one thread of
//! the CTA copies each tile with `cp.async.bulk.tensor`, which swizzles it into the K-major layout
//! the wgmmas read (`kernels-gpu/src/hopper/smem.rs`), instead of every thread issuing 16-byte
//! copies (whose addresses took the registers a third warpgroup needs). Encoding is a host-only
//! driver call; the descriptors then go to the call's scratch memory (`ScratchLayout::tma`) with
//! a stream-ordered copy, and the kernel gets their address (`AttnParams::tma`). (Kernel
//! parameters would save the copy, but rustc's nvptx64 calling convention cannot give a
//! parameter the 64-byte alignment a descriptor needs.)

use cudarc::driver::sys::{
    cuTensorMapEncodeTiled, CUtensorMap, CUtensorMapDataType, CUtensorMapFloatOOBfill,
    CUtensorMapInterleave, CUtensorMapL2promotion, CUtensorMapSwizzle,
};

use crate::types::error::{Error, Result};

/// Bytes of the two descriptors (K, then Vᵀ).
pub(crate) const TMA_MAPS_BYTES: usize = 256;

/// The K and Vᵀ descriptors, in the order the kernel reads them.
pub(crate) type TmaMaps = [u64; TMA_MAPS_BYTES / 8];

/// Keys of one K box (a whole 128-key tile).
const K_BOX_KEYS: u32 = 128;
/// Keys of one Vᵀ box (a 64-key sub-tile; a tile is two).
const V_BOX_KEYS: u32 = 64;

/// The descriptors of the INT8 K `[heads][padded_k][head_dim]` at `k` and the INT8 Vᵀ
/// `[heads][head_dim][padded_k]` at `vt` (`heads` = batch · kv_heads). `head_dim` is 64 or 128
/// and `padded_k` a multiple of 64, so every stride is a multiple of 16 bytes as TMA needs; keys
/// past `padded_k` read as zeros.
pub(crate) fn pv8_tensor_maps(
    k: u64,
    vt: u64,
    heads: usize,
    padded_k: usize,
    head_dim: usize,
) -> Result<TmaMaps> {
    let k_swizzle = match head_dim {
        128 => CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
        64 => CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_64B,
        _ => {
            return Err(Error::InvalidOption(format!(
                "no TMA layout for the 8-bit P·V at head_dim {head_dim}"
            )))
        }
    };
    let (d, n, h) = (head_dim as u64, padded_k as u64, heads as u64);
    let k_map = encode_3d(
        "K",
        k,
        [d, n, h],
        [d, n * d],
        [head_dim as u32, K_BOX_KEYS, 1],
        k_swizzle,
    )?;
    let v_map = encode_3d(
        "Vᵀ",
        vt,
        [n, d, h],
        [n, n * d],
        [V_BOX_KEYS, head_dim as u32, 1],
        CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_64B,
    )?;
    let mut maps = [0u64; TMA_MAPS_BYTES / 8];
    maps[..16].copy_from_slice(&k_map.opaque);
    maps[16..].copy_from_slice(&v_map.opaque);
    Ok(maps)
}

/// A 3-D UINT8 tiled descriptor: `dims` innermost first, `strides` in bytes of dims 1 and 2.
fn encode_3d(
    what: &str,
    base: u64,
    dims: [u64; 3],
    strides: [u64; 2],
    boxes: [u32; 3],
    swizzle: CUtensorMapSwizzle,
) -> Result<CUtensorMap> {
    let mut map = CUtensorMap { opaque: [0; 16] };
    let element_strides = [1u32; 3];
    // SAFETY: every pointer refers to a live local array of the length the rank (3) implies; the
    // call only writes `map`. `base` is a device address the driver checks, never dereferenced
    // on the host.
    let status = unsafe {
        cuTensorMapEncodeTiled(
            &mut map,
            CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_UINT8,
            3,
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
    status.result().map_err(|source| Error::Cuda {
        op: format!("encoding the TMA descriptor of the 8-bit P·V {what} (dims {dims:?})"),
        source,
    })?;
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_dims_without_a_tma_layout_are_refused_before_the_driver() {
        for hd in [32, 96, 256] {
            let err = pv8_tensor_maps(0x1000, 0x2000, 4, 1024, hd).unwrap_err();
            assert!(matches!(err, Error::InvalidOption(_)), "{hd}: {err}");
        }
    }
}
