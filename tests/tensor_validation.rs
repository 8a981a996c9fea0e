//! CPU-only tests of tensor geometry validation, errors and the pieces of the runtime that need no
//! GPU. Views are made with `unsafe from_raw` over synthetic addresses: `validate` makes no driver
//! call, so nothing here dereferences them. Runs in CI (no CUDA driver needed).

use proptest::prelude::*;
use sageattention::device_config::{
    is_supported_head_dim, portable_kernel_head_dim, KERNEL_HEAD_DIMS, MAX_HEAD_DIM,
    SUPPORTED_HEAD_DIMS, SUPPORTED_HEAD_DIMS_TEXT,
};
use sageattention::error::{CudaResultExt, Error};
use sageattention::tensor::{
    check_device_pointer, DType, Element, Layout, TensorView, TensorViewMut,
};
use sageattention::varlen::check_varlen_inputs;
use sageattention::Options;

/// A 16-byte aligned synthetic device address.
const ALIGNED: u64 = 0x7f00_0000_0000;

fn view(ptr: u64, dtype: DType, shape: [usize; 4], strides: [i64; 4]) -> TensorView<'static> {
    // SAFETY: the view is only validated (pure arithmetic), never dereferenced or launched.
    unsafe { TensorView::from_raw(ptr, dtype, shape, strides, 0) }
}

fn view_mut(
    ptr: u64,
    dtype: DType,
    shape: [usize; 4],
    strides: [i64; 4],
) -> TensorViewMut<'static> {
    // SAFETY: as in `view`.
    unsafe { TensorViewMut::from_raw(ptr, dtype, shape, strides, 0) }
}

fn contiguous(dtype: DType, shape: [usize; 4], layout: Layout) -> TensorView<'static> {
    view(ALIGNED, dtype, shape, layout.contiguous_strides(shape))
}

// ------------------------------------------------------------------------------------------------
// DType, Layout, Element
// ------------------------------------------------------------------------------------------------

#[test]
fn dtype_sizes_and_names() {
    assert_eq!(DType::F16.size_bytes(), 2);
    assert_eq!(DType::BF16.size_bytes(), 2);
    assert_eq!(DType::F32.size_bytes(), 4);
    assert_eq!(DType::I8.size_bytes(), 1);
    assert_eq!(DType::F16.name(), "f16");
    assert_eq!(DType::BF16.to_string(), "bf16");
    assert_eq!(format!("{}", DType::F32), "f32");
    assert_eq!(DType::I8.name(), "i8");
    // 8 elements and at least 16 bytes.
    assert_eq!(DType::F16.stride_multiple(), 8);
    assert_eq!(DType::BF16.stride_multiple(), 8);
    assert_eq!(DType::F32.stride_multiple(), 8);
    assert_eq!(DType::I8.stride_multiple(), 16);
}

#[test]
fn element_dtypes_and_conversions() {
    assert_eq!(<half::f16 as Element>::DTYPE, DType::F16);
    assert_eq!(<half::bf16 as Element>::DTYPE, DType::BF16);
    assert_eq!(<f32 as Element>::DTYPE, DType::F32);
    assert_eq!(<i8 as Element>::DTYPE, DType::I8);
    assert_eq!(<half::f16 as Element>::from_f32(1.5).to_f32(), 1.5);
    assert_eq!(<half::bf16 as Element>::from_f32(-2.0).to_f32(), -2.0);
    assert_eq!(<i8 as Element>::from_f32(2.5), 2);
    assert_eq!(<i8 as Element>::from_f32(-3.5), -4);
    assert_eq!(<i8 as Element>::from_f32(1000.0), 127);
    assert_eq!(<i8 as Element>::from_f32(-1000.0), -128);
    assert_eq!(<i8 as Element>::from_f32(f32::NAN), 0);
}

#[test]
fn contiguous_strides_hnd() {
    // [batch, heads, seq, dim] = [2, 3, 5, 64]; memory (b, h, s, d).
    assert_eq!(
        Layout::Hnd.contiguous_strides([2, 3, 5, 64]),
        [3 * 5 * 64, 5 * 64, 64, 1]
    );
}

#[test]
fn contiguous_strides_nhd() {
    // memory (b, s, h, d); strides still reported in logical order [b, h, s, d].
    assert_eq!(
        Layout::Nhd.contiguous_strides([2, 3, 5, 64]),
        [5 * 3 * 64, 64, 3 * 64, 1]
    );
}

#[test]
fn contiguous_strides_saturate_instead_of_overflowing() {
    let s = Layout::Hnd.contiguous_strides([1, usize::MAX, usize::MAX, 128]);
    assert_eq!(s[0], i64::MAX);
    let s = Layout::Nhd.contiguous_strides([usize::MAX; 4]);
    assert_eq!(s, [i64::MAX, i64::MAX, i64::MAX, 1]);
}

#[test]
fn contiguous_views_validate_for_every_layout_and_dtype() {
    for layout in [Layout::Hnd, Layout::Nhd] {
        for dtype in [DType::F16, DType::BF16, DType::F32, DType::I8] {
            for shape in [
                [1, 1, 1, 64],
                [2, 8, 1000, 128],
                [3, 5, 7, 96],
                [1, 32, 4096, 64],
            ] {
                let v = contiguous(dtype, shape, layout);
                v.validate("q").unwrap();
                let m = view_mut(ALIGNED, dtype, shape, layout.contiguous_strides(shape));
                m.validate("out").unwrap();
            }
        }
    }
}

#[test]
fn accessors_report_logical_geometry() {
    let v = contiguous(DType::BF16, [2, 4, 100, 128], Layout::Nhd);
    assert_eq!(v.shape(), [2, 4, 100, 128]);
    assert_eq!(
        (v.batch(), v.heads(), v.seq(), v.head_dim()),
        (2, 4, 100, 128)
    );
    assert_eq!(v.strides(), [100 * 4 * 128, 128, 4 * 128, 1]);
    assert_eq!(v.dtype(), DType::BF16);
    assert_eq!(v.ordinal(), 0);
    assert!(!v.is_tracked());
    let m = view_mut(ALIGNED, DType::F32, [1, 2, 3, 64], [384, 192, 64, 1]);
    let r = m.as_view();
    assert_eq!(r.shape(), [1, 2, 3, 64]);
    assert_eq!(r.strides(), [384, 192, 64, 1]);
    assert_eq!(r.dtype(), DType::F32);
}

// ------------------------------------------------------------------------------------------------
// The rules, one by one, and their order
// ------------------------------------------------------------------------------------------------

#[test]
fn empty_dimension_is_rejected_first() {
    for i in 0..4 {
        let mut shape = [2, 4, 16, 64];
        shape[i] = 0;
        // Also give it bad strides and a bad pointer: emptiness is reported first.
        let v = view(3, DType::F16, shape, [-1, 7, 3, 2]);
        match v.validate("k") {
            Err(Error::EmptyTensor { tensor, shape: s }) => {
                assert_eq!(tensor, "k");
                assert_eq!(s, shape);
            }
            other => panic!("dim {i}: {other:?}"),
        }
    }
    let msg = view(ALIGNED, DType::F16, [1, 0, 4, 64], [0, 0, 64, 1])
        .validate("v")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("`v`") && msg.contains("[1, 0, 4, 64]"),
        "{msg}"
    );
}

#[test]
fn negative_strides_are_rejected() {
    for i in 0..4 {
        let mut strides = Layout::Hnd.contiguous_strides([2, 2, 8, 64]);
        strides[i] = -strides[i];
        let e = view(ALIGNED, DType::F16, [2, 2, 8, 64], strides)
            .validate("q")
            .unwrap_err();
        match &e {
            Error::InvalidStride { tensor, reason } => {
                assert_eq!(*tensor, "q");
                assert!(reason.contains("negative"), "{reason}");
                assert!(reason.contains(&strides[i].to_string()), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn head_dim_stride_must_be_one() {
    let e = view(ALIGNED, DType::F16, [1, 1, 4, 64], [512, 512, 128, 2])
        .validate("q")
        .unwrap_err();
    match e {
        Error::InvalidStride { reason, .. } => {
            assert!(reason.contains("head_dim stride is 2"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn row_strides_must_be_multiples_of_eight_elements() {
    // seq stride 100 with f16: 200 bytes, not 16-byte aligned rows.
    let e = view(ALIGNED, DType::F16, [1, 2, 4, 64], [800, 400, 100, 1])
        .validate("k")
        .unwrap_err();
    match e {
        Error::InvalidStride { tensor, reason } => {
            assert_eq!(tensor, "k");
            assert!(reason.contains("seq stride is 100"), "{reason}");
            assert!(reason.contains("multiple of 8"), "{reason}");
            assert!(reason.contains("16-byte"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // Head stride.
    let e = view(ALIGNED, DType::BF16, [1, 2, 4, 64], [1024, 260, 64, 1])
        .validate("k")
        .unwrap_err();
    assert!(
        matches!(e, Error::InvalidStride { ref reason, .. } if reason.contains("heads stride"))
    );
    // Batch stride.
    let e = view(ALIGNED, DType::F32, [2, 2, 4, 64], [516, 256, 64, 1])
        .validate("o")
        .unwrap_err();
    assert!(
        matches!(e, Error::InvalidStride { ref reason, .. } if reason.contains("batch stride"))
    );
    // i8 needs 16 elements (16 bytes).
    let e = view(ALIGNED, DType::I8, [1, 1, 4, 64], [256, 256, 72, 1])
        .validate("q_i8")
        .unwrap_err();
    assert!(
        matches!(e, Error::InvalidStride { ref reason, .. } if reason.contains("multiple of 16"))
    );
    view(ALIGNED, DType::I8, [1, 1, 4, 64], [320, 320, 80, 1])
        .validate("q_i8")
        .unwrap();
    // f16 with a padded, 8-aligned row stride is fine.
    view(ALIGNED, DType::F16, [1, 2, 4, 64], [1152, 576, 72, 1])
        .validate("k")
        .unwrap();
}

#[test]
fn strides_of_size_one_dims_are_not_constrained() {
    // batch = 1 and heads = 1: their strides never multiply a non-zero index.
    view(ALIGNED, DType::F16, [1, 1, 16, 64], [12345, 7, 64, 1])
        .validate("q")
        .unwrap();
    // ...but they must still be non-negative.
    assert!(matches!(
        view(ALIGNED, DType::F16, [1, 1, 16, 64], [-8, 0, 64, 1]).validate("q"),
        Err(Error::InvalidStride { .. })
    ));
}

#[test]
fn broadcast_inputs_are_allowed_but_overlapping_outputs_are_not() {
    // Zero head stride: every head reads the same K (fine for an input).
    let shape = [1, 4, 16, 64];
    let strides = [1024, 0, 64, 1];
    view(ALIGNED, DType::F16, shape, strides)
        .validate("k")
        .unwrap();
    let e = view_mut(ALIGNED, DType::F16, shape, strides)
        .validate("out")
        .unwrap_err();
    match e {
        Error::InvalidStride { tensor, reason } => {
            assert_eq!(tensor, "out");
            assert!(reason.contains("overlap"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // Rows overlapping: seq stride 32 < head_dim 64.
    assert!(matches!(
        view_mut(ALIGNED, DType::F16, [1, 1, 4, 64], [256, 256, 32, 1]).validate("out"),
        Err(Error::InvalidStride { .. })
    ));
    // Heads interleaved inside rows without collisions is fine (Nhd).
    view_mut(
        ALIGNED,
        DType::F16,
        [2, 4, 16, 64],
        Layout::Nhd.contiguous_strides([2, 4, 16, 64]),
    )
    .validate("out")
    .unwrap();
    // Padded rows are fine.
    view_mut(ALIGNED, DType::F32, [1, 2, 3, 64], [512, 256, 80, 1])
        .validate("out")
        .unwrap();
}

#[test]
fn null_pointer_is_not_device_memory() {
    let e = view(0, DType::F16, [1, 1, 1, 64], [64, 64, 64, 1])
        .validate("q")
        .unwrap_err();
    assert!(matches!(
        e,
        Error::NotDeviceMemory {
            tensor: "q",
            ptr: 0
        }
    ));
}

#[test]
fn misaligned_base_pointer_is_rejected() {
    for offset in [1u64, 2, 4, 8, 15] {
        let e = view(
            ALIGNED + offset,
            DType::F16,
            [1, 1, 4, 64],
            [256, 256, 64, 1],
        )
        .validate("v")
        .unwrap_err();
        match e {
            Error::Misaligned { tensor, reason } => {
                assert_eq!(tensor, "v");
                assert!(
                    reason.contains(&format!("{:#x}", ALIGNED + offset)),
                    "{reason}"
                );
                assert!(reason.contains("16-byte"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }
    // Stride errors are reported before alignment errors.
    assert!(matches!(
        view(ALIGNED + 2, DType::F16, [1, 1, 4, 64], [256, 256, 65, 1]).validate("v"),
        Err(Error::InvalidStride { .. })
    ));
}

#[test]
fn huge_dims_are_too_large_not_a_panic() {
    let cases: Vec<([usize; 4], [i64; 4])> = vec![
        ([usize::MAX, 1, 1, 64], [64, 64, 64, 1]),
        ([2, 2, 1 << 62, 64], [i64::MAX - 7, 1 << 40, 64, 1]),
        ([1 << 40, 1 << 20, 1, 8], [8, 8, 8, 1]),
        ([1, 1, 1 << 60, 64], [0, 0, 64, 1]),
        ([1, 1, 2, 1 << 62], [0, 0, 1 << 62, 1]),
    ];
    for (shape, strides) in cases {
        for dtype in [DType::F16, DType::F32, DType::I8] {
            let strides = strides.map(|s| if s > 1 && s % 16 != 0 { s - s % 16 } else { s });
            match view(ALIGNED, dtype, shape, strides).validate("q") {
                Err(Error::TooLarge { tensor, reason }) => {
                    assert_eq!(tensor, "q");
                    assert!(!reason.is_empty());
                }
                other => panic!("{shape:?} {strides:?} {dtype}: {other:?}"),
            }
        }
    }
    // Contiguous strides of a huge shape saturate, then validate says TooLarge.
    let v = contiguous(DType::F16, [1 << 20, 1 << 20, 1 << 20, 64], Layout::Hnd);
    assert!(matches!(v.validate("q"), Err(Error::TooLarge { .. })));
}

#[test]
fn end_address_overflow_is_too_large() {
    let ptr = u64::MAX - 15; // aligned, but the extent runs past 2^64
    let e = view(ptr, DType::F16, [1, 1, 2, 64], [128, 128, 64, 1])
        .validate("q")
        .unwrap_err();
    match e {
        Error::TooLarge { reason, .. } => assert!(reason.contains("address space"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn offsets_beyond_two_to_the_31_are_fine() {
    // 2^33 elements: 64-bit offsets, no i32 limit in validation.
    let shape = [1, 2, 1 << 26, 64];
    contiguous(DType::F16, shape, Layout::Hnd)
        .validate("k")
        .unwrap();
}

// ------------------------------------------------------------------------------------------------
// Errors and driver-free paths
// ------------------------------------------------------------------------------------------------

#[test]
fn error_messages_name_the_values() {
    let e = Error::DTypeMismatch {
        tensor: "k",
        expected: DType::F16,
        got: DType::BF16,
    };
    assert_eq!(e.to_string(), "tensor `k` has dtype bf16, expected f16");
    let e = Error::UnsupportedDType {
        tensor: "q",
        dtype: DType::I8,
        supported: &[DType::F16, DType::BF16],
    };
    assert!(e.to_string().contains("i8") && e.to_string().contains("f16, bf16"));
    let e = Error::UnsupportedHeadDim {
        head_dim: 80,
        supported: &[64, 128],
    };
    assert!(e.to_string().contains("80") && e.to_string().contains("64, 128"));
    let e = Error::UnsupportedHeadDim {
        head_dim: 264,
        supported: &SUPPORTED_HEAD_DIMS,
    };
    assert_eq!(
        e.to_string(),
        format!("unsupported head_dim 264; supported: {SUPPORTED_HEAD_DIMS_TEXT}")
    );
    let e = Error::HeadsNotDivisible {
        q_heads: 12,
        kv_heads: 5,
    };
    assert!(e.to_string().contains("12") && e.to_string().contains('5'));
    let e = Error::WrongDevice {
        tensor: "v",
        expected: 0,
        got: 1,
    };
    assert!(e.to_string().contains("device 1") && e.to_string().contains("device 0"));
    let e = Error::NotDeviceMemory {
        tensor: "q",
        ptr: 0x1234,
    };
    assert!(e.to_string().contains("0x1234"));
    let e = Error::UnsupportedDevice {
        name: "Tesla T4".into(),
        major: 7,
        minor: 5,
    };
    assert!(e.to_string().contains("Tesla T4") && e.to_string().contains("7.5"));
    let e = Error::KernelNotFound {
        module: "portable",
        name: "sage_fwd".into(),
    };
    assert!(e.to_string().contains("sage_fwd") && e.to_string().contains("portable"));
}

#[test]
fn cuda_errors_carry_the_op_and_the_error_name_without_a_driver() {
    use cudarc::driver::{sys::CUresult, DriverError};
    let r: Result<(), DriverError> = Err(DriverError(CUresult::CUDA_ERROR_OUT_OF_MEMORY));
    let e = r.op("allocating 1 GiB").unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("allocating 1 GiB"), "{msg}");
    assert!(msg.contains("CUDA_ERROR_OUT_OF_MEMORY"), "{msg}");
    assert!(std::error::Error::source(&e).is_some());
    let r: Result<u8, DriverError> = Err(DriverError(CUresult::CUDA_ERROR_LAUNCH_FAILED));
    let msg = r
        .with_op(|| format!("launching {}", "k"))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("launching k") && msg.contains("CUDA_ERROR_LAUNCH_FAILED"));
    let ok: Result<u8, DriverError> = Ok(3);
    assert_eq!(ok.op("x").unwrap(), 3);
}

#[test]
fn check_device_pointer_rejects_null_and_host_memory() {
    assert!(matches!(
        check_device_pointer("q", 0, 0),
        Err(Error::NotDeviceMemory {
            tensor: "q",
            ptr: 0
        })
    ));
    // A host address: without a driver the check says so; with one, it is not device memory.
    let host = [0u8; 64];
    let ptr = host.as_ptr() as u64;
    match check_device_pointer("q", ptr, 0) {
        Err(Error::DriverUnavailable { .. }) | Err(Error::NotDeviceMemory { .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn runtime_without_a_driver_is_an_error_not_a_panic() {
    // On a machine with a GPU this opens device 0, which is fine too.
    match sageattention::runtime::Runtime::new(0) {
        Ok(rt) => assert_eq!(rt.ordinal(), 0),
        Err(Error::DriverUnavailable { .. }) | Err(Error::Cuda { .. }) => {}
        Err(other) => panic!("{other:?}"),
    }
}

// ------------------------------------------------------------------------------------------------
// Properties
// ------------------------------------------------------------------------------------------------

fn any_dim() -> impl Strategy<Value = usize> {
    prop_oneof![
        4 => 0usize..300,
        1 => Just(usize::MAX),
        1 => any::<usize>(),
        1 => (0u32..64).prop_map(|b| 1usize << b),
    ]
}

fn any_stride() -> impl Strategy<Value = i64> {
    prop_oneof![
        4 => (0i64..100_000).prop_map(|s| s * 8),
        2 => any::<i64>(),
        1 => Just(i64::MAX),
        1 => Just(i64::MIN),
        1 => Just(1i64),
        1 => (0u32..63).prop_map(|b| 1i64 << b),
    ]
}

fn any_dtype() -> impl Strategy<Value = DType> {
    prop_oneof![
        Just(DType::F16),
        Just(DType::BF16),
        Just(DType::F32),
        Just(DType::I8)
    ]
}

fn any_ptr() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => (1u64..1 << 44).prop_map(|p| p * 16),
        1 => any::<u64>(),
        1 => Just(!15u64),
        1 => Just(0u64),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    /// Validation never panics, whatever the geometry, and is deterministic.
    #[test]
    fn validate_never_panics(
        ptr in any_ptr(),
        dtype in any_dtype(),
        shape in prop::array::uniform4(any_dim()),
        strides in prop::array::uniform4(any_stride()),
    ) {
        let a = view(ptr, dtype, shape, strides).validate("x").map_err(|e| e.to_string());
        let b = view(ptr, dtype, shape, strides).validate("x").map_err(|e| e.to_string());
        prop_assert_eq!(&a, &b);
        let m = view_mut(ptr, dtype, shape, strides).validate("x").map_err(|e| e.to_string());
        // An output is never accepted where the same geometry as an input is rejected.
        if m.is_ok() {
            prop_assert!(a.is_ok());
        }
        let _ = Layout::Hnd.contiguous_strides(shape);
        let _ = Layout::Nhd.contiguous_strides(shape);
    }

    /// Whatever validate accepts has a last-element byte offset that fits in i64 and ends
    /// inside the address space, rows on 16-byte boundaries, and no empty dimension.
    #[test]
    fn accepted_views_are_sound(
        ptr in any_ptr(),
        dtype in any_dtype(),
        shape in prop::array::uniform4(any_dim()),
        strides in prop::array::uniform4(any_stride()),
    ) {
        if view(ptr, dtype, shape, strides).validate("x").is_ok() {
            prop_assert!(shape.iter().all(|&d| d >= 1));
            prop_assert!(ptr != 0 && ptr % 16 == 0);
            prop_assert_eq!(strides[3], 1);
            let mut last: i128 = 0;
            for i in 0..4 {
                prop_assert!(strides[i] >= 0);
                if i < 3 && shape[i] > 1 {
                    let row_bytes = strides[i] as i128 * dtype.size_bytes() as i128;
                    prop_assert_eq!(row_bytes % 16, 0);
                    prop_assert_eq!(strides[i] % 8, 0);
                }
                last += (shape[i] as i128 - 1) * strides[i] as i128;
            }
            let bytes = (last + 1) * dtype.size_bytes() as i128;
            prop_assert!(bytes <= i64::MAX as i128);
            prop_assert!(ptr as i128 + bytes <= u64::MAX as i128);
        }
    }

    /// Contiguous tensors of reasonable size validate in both layouts, as inputs and outputs.
    #[test]
    fn contiguous_tensors_validate(
        b in 1usize..8, h in 1usize..64, s in 1usize..5000, d8 in 1usize..33,
        dtype in any_dtype(), nhd in any::<bool>(),
    ) {
        let d = d8 * 16;
        let layout = if nhd { Layout::Nhd } else { Layout::Hnd };
        let shape = [b, h, s, d];
        let strides = layout.contiguous_strides(shape);
        prop_assert!(view(ALIGNED, dtype, shape, strides).validate("x").is_ok());
        prop_assert!(view_mut(ALIGNED, dtype, shape, strides).validate("x").is_ok());
    }
}

// ------------------------------------------------------------------------------------------------
// head_dim: every multiple of 8 up to 256
// ------------------------------------------------------------------------------------------------

/// A packed `[1, heads, rows, head_dim]` NHD view (what the varlen checks take; they run the
/// batched call's checks on it).
fn packed(
    dtype: DType,
    heads: usize,
    rows: usize,
    head_dim: usize,
    base: u64,
) -> TensorView<'static> {
    let row = (heads * head_dim) as i64;
    view(
        base,
        dtype,
        [1, heads, rows, head_dim],
        [row * rows as i64, head_dim as i64, row, 1],
    )
}

fn check_head_dim(head_dim: usize) -> Result<(), Error> {
    let q = packed(DType::F16, 4, 16, head_dim, ALIGNED);
    let k = packed(DType::F16, 2, 16, head_dim, ALIGNED << 1);
    let v = packed(DType::F16, 2, 16, head_dim, ALIGNED << 2);
    check_varlen_inputs(&q, &k, &v, &[0, 16], &[0, 16], 16, 16, &Options::default()).map(|_| ())
}

#[test]
fn supported_head_dims_are_the_multiples_of_8_up_to_256() {
    assert_eq!(SUPPORTED_HEAD_DIMS.len(), 32);
    assert_eq!(
        SUPPORTED_HEAD_DIMS.to_vec(),
        (1..=32).map(|i| 8 * i).collect::<Vec<_>>()
    );
    assert_eq!(MAX_HEAD_DIM, 256);
    for d in 0..=600 {
        assert_eq!(
            is_supported_head_dim(d),
            SUPPORTED_HEAD_DIMS.contains(&d),
            "{d}"
        );
        assert_eq!(
            portable_kernel_head_dim(d).is_some(),
            is_supported_head_dim(d)
        );
    }
    assert_eq!(KERNEL_HEAD_DIMS, [64, 96, 128, 256]);
}

#[test]
fn every_supported_head_dim_passes_validation() {
    for d in SUPPORTED_HEAD_DIMS {
        check_head_dim(d).unwrap_or_else(|e| panic!("head_dim {d}: {e}"));
    }
}

/// 0, above 256 and not a multiple of 8 are refused by name, with the supported set, before any
/// other check (a zero head_dim is not reported as an empty tensor).
#[test]
fn unsupported_head_dims_name_the_supported_set() {
    for d in [
        0usize, 1, 4, 12, 36, 100, 250, 255, 257, 264, 288, 512, 1024,
    ] {
        let e = check_head_dim(d).unwrap_err();
        assert!(
            matches!(e, Error::UnsupportedHeadDim { head_dim, supported }
                if head_dim == d && supported == SUPPORTED_HEAD_DIMS),
            "head_dim {d}: {e}"
        );
        let text = e.to_string();
        assert!(
            text.contains(&format!("head_dim {d}"))
                && text.contains("every multiple of 8 from 8 to 256"),
            "{text}"
        );
    }
}

proptest! {
    /// Any head_dim: accepted exactly when it is a multiple of 8 in 8..=256.
    #[test]
    fn head_dim_validation_matches_the_rule(d in 0usize..2048) {
        let ok = check_head_dim(d).is_ok();
        prop_assert_eq!(ok, d > 0 && d <= 256 && d.is_multiple_of(8));
    }
}
