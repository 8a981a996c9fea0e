//! GPU tests of the Hopper (sm_90a) wgmma kernel (`kernels-gpu/src/hopper/`, `host/hopper.rs`):
//!
//! * single-tile wgmma tests: the Q·Kᵀ path (s8, both operands from swizzled shared memory) and the
//!   P·V path (f16, A from registers, B N-major from shared memory) equal exact CPU products;
//! * the attention kernel equals the portable kernel on the same quantized inputs (rel L1 ≤ 2e-3,
//!   LSE within 1e-3) and the CPU emulation of the quantized algorithm, over awkward lengths,
//!   causal on/off, GQA, qo_len ≠ kv_len, rows without keys, f16/bf16 output, HND/NHD strides;
//! * scores that jump late in a row, and scores that rise steadily along the keys (the f16
//!   kernels' retry of a tile taken against a lagging max) equal the CPU emulation;
//! * a timing probe (`hopper_perf_probe`) against the portable kernel.
//!
//! Every test skips (passes) on a GPU that is not compute capability 9.0. Run on a GPU with
//! `--ignored --test-threads=1 hopper`.

mod common;

use common::{
    bit_differences, channel_offsets, fresh_rng, median_ms, random_device_tensor, random_tensor,
    runtime, upload,
};
use half::f16;
use rand::Rng;
use sageattention::hopper::{self, hopper_available};
use sageattention::reference::{attention_quantized_emulation, compare, RefOptions};
use sageattention::{Backend, DType, Layout, Options, Prepared, PvAccum, PvPrecision, Tensor};

/// GPU-vs-GPU bound (portable kernel, PvAccum::F32, against the sm_90a kernel).
const PORTABLE_REL_L1: f64 = 2e-3;
/// Against the CPU emulation (as tests/gpu_attention.rs).
const EMULATION_REL_L1: f64 = 3e-3;
/// LSE, absolute (natural log).
const LSE_TOL: f64 = 1e-3;

fn skip_unless_hopper() -> bool {
    let rt = runtime();
    if hopper_available(rt) {
        false
    } else {
        eprintln!("not a compute capability 9.0 GPU (or no Hopper PTX): skipped");
        true
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn hopper_wgmma_s8_tile_equals_integer_matmul() {
    if skip_unless_hopper() {
        return;
    }
    let rt = runtime();
    let mut rng = fresh_rng("hopper_wgmma_s8");
    for hd in [64usize, 96, 128] {
        for _ in 0..4 {
            let a: Vec<i8> = (0..64 * hd).map(|_| rng.gen_range(-128..=127)).collect();
            let b: Vec<i8> = (0..64 * hd).map(|_| rng.gen_range(-128..=127)).collect();
            let d = hopper::wgmma_s8_tile(rt, hd, &a, &b).unwrap();
            let mut bad = 0;
            for i in 0..64 {
                for j in 0..64 {
                    let want: i32 = (0..hd)
                        .map(|k| a[i * hd + k] as i32 * b[j * hd + k] as i32)
                        .sum();
                    if d[i * 64 + j] != want {
                        if bad < 5 {
                            eprintln!("hd {hd}: D[{i}][{j}] = {} want {want}", d[i * 64 + j]);
                        }
                        bad += 1;
                    }
                }
            }
            assert_eq!(bad, 0, "hd {hd}: {bad} of 4096 wrong");
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn hopper_wgmma_f16_tile_equals_exact_product() {
    if skip_unless_hopper() {
        return;
    }
    let rt = runtime();
    let mut rng = fresh_rng("hopper_wgmma_f16");
    // Small multiples of 0.5: every product and every partial sum of 64 terms is exact in f32.
    let mut small = || f16::from_f32(rng.gen_range(-4i32..=4) as f32 * 0.5).to_bits();
    let f = |x: u16| f16::from_bits(x).to_f32();
    // 96: the m64n96k16 wgmma on V in 64-byte-swizzled blocks of 32 channels.
    for hd in [64usize, 96, 128] {
        for _ in 0..4 {
            let a: Vec<u16> = (0..64 * 64).map(|_| small()).collect();
            let b: Vec<u16> = (0..64 * hd).map(|_| small()).collect();
            let d = hopper::wgmma_f16_tile(rt, hd, &a, &b).unwrap();
            let mut bad = 0;
            for i in 0..64 {
                for j in 0..hd {
                    let want: f32 = (0..64).map(|k| f(a[i * 64 + k]) * f(b[k * hd + j])).sum();
                    if d[i * hd + j] != want {
                        if bad < 5 {
                            eprintln!("hd {hd}: D[{i}][{j}] = {} want {want}", d[i * hd + j]);
                        }
                        bad += 1;
                    }
                }
            }
            assert_eq!(bad, 0, "hd {hd}: {bad} of {} wrong", 64 * hd);
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Case {
    batch: usize,
    q_heads: usize,
    kv_heads: usize,
    qo_len: usize,
    kv_len: usize,
    head_dim: usize,
    causal: bool,
    in_dtype: DType,
    out_dtype: DType,
    layout: Layout,
    smooth_k: bool,
}

/// Runs one case through both kernels on the same `Prepared` and checks them against each other
/// and against the CPU emulation.
fn check_case(case: Case, rng: &mut rand::rngs::StdRng) {
    check_case_with(case, rng, true);
}

/// [`check_case`], against the CPU emulation only when `emulate` (long sequences: the portable
/// kernel, itself checked against the emulation elsewhere, is the reference).
fn check_case_with(case: Case, rng: &mut rand::rngs::StdRng, emulate: bool) {
    let rt = runtime();
    let d = case.head_dim;
    let offsets = channel_offsets(rng, d, 2.0);
    let q = random_tensor(
        rng,
        [case.batch, case.q_heads, case.qo_len, d],
        case.in_dtype,
        1.0,
        None,
    );
    let k = random_tensor(
        rng,
        [case.batch, case.kv_heads, case.kv_len, d],
        case.in_dtype,
        1.0,
        Some(&offsets),
    );
    let v = random_tensor(
        rng,
        [case.batch, case.kv_heads, case.kv_len, d],
        case.in_dtype,
        1.0,
        None,
    );
    let (qd, kd, vd) = (
        upload(rt, &q, case.in_dtype, case.layout),
        upload(rt, &k, case.in_dtype, case.layout),
        upload(rt, &v, case.in_dtype, case.layout),
    );
    let opts = Options {
        causal: case.causal,
        smooth_k: case.smooth_k,
        sm_scale: None,
        layout: case.layout,
        pv_accum: PvAccum::F32,
        pv_precision: PvPrecision::F16,
        return_lse: true,
        backend: Backend::Portable,
    };
    let prepared = Prepared::new(rt, &qd.view(), &kd.view(), &vd.view(), &opts).unwrap();
    // The same inputs through the library's dispatch: the sm_90a kernel on Hopper.
    let auto = Options {
        backend: Backend::Auto,
        ..opts
    };
    // The sm_90a kernel of the smallest compiled size >= d (d = 65..=96: the native d = 96 one).
    let kernel = sageattention::attention::selected_kernel(rt, d, &auto).unwrap();
    let want = hopper::SM90_HEAD_DIMS
        .iter()
        .copied()
        .filter(|&k| k >= d)
        .min();
    assert!(
        kernel.quantizes_q() && Some(kernel.head_dim) == want,
        "{case:?}: {kernel:?}"
    );
    let prepared_h = Prepared::new(rt, &qd.view(), &kd.view(), &vd.view(), &auto).unwrap();
    let shape = [case.batch, case.q_heads, case.qo_len, d];
    let rows = case.batch * case.q_heads * case.qo_len;
    let mut out_p = Tensor::alloc_filled_nan(rt, case.out_dtype, shape, case.layout).unwrap();
    let mut out_h = Tensor::alloc_filled_nan(rt, case.out_dtype, shape, case.layout).unwrap();
    let mut lse_p = rt.stream().clone_htod(&vec![f32::NAN; rows]).unwrap();
    let mut lse_h = rt.stream().clone_htod(&vec![f32::NAN; rows]).unwrap();
    prepared
        .attend_into(rt, &vd.view(), &mut out_p.view_mut(), Some(&mut lse_p))
        .unwrap();
    prepared_h
        .attend_into(rt, &vd.view(), &mut out_h.view_mut(), Some(&mut lse_h))
        .unwrap();
    let (o_p, o_h) = (
        out_p.to_host_f32(rt).unwrap(),
        out_h.to_host_f32(rt).unwrap(),
    );
    let (l_p, l_h) = (
        rt.stream().clone_dtoh(&lse_p).unwrap(),
        rt.stream().clone_dtoh(&lse_h).unwrap(),
    );

    assert!(
        o_h.iter().all(|x| x.is_finite()),
        "unwritten or non-finite sm90 output: {case:?}"
    );
    let o_p64: Vec<f64> = o_p.iter().map(|&x| x as f64).collect();
    let m = compare(&o_h, &o_p64);
    let lse_diff = l_h
        .iter()
        .zip(&l_p)
        .map(|(&a, &b)| {
            if a == b {
                0.0
            } else {
                (a as f64 - b as f64).abs()
            }
        })
        .fold(0.0, f64::max);
    if !emulate {
        eprintln!(
            "{case:?}: vs portable rel L1 {:.2e} max_abs {:.2e} LSE {lse_diff:.2e}",
            m.rel_l1, m.max_abs
        );
        assert!(
            m.n_nan_mismatch == 0 && m.rel_l1 <= PORTABLE_REL_L1,
            "vs portable: {case:?} {m:?}"
        );
        assert!(
            lse_diff <= LSE_TOL,
            "LSE vs portable {lse_diff:.2e}: {case:?}"
        );
        return;
    }

    let reference = attention_quantized_emulation(
        &q,
        &k,
        &v,
        &RefOptions {
            causal: case.causal,
            sm_scale: None,
        },
        case.smooth_k,
        false,
    );
    let m_ref = compare(&o_h, &reference.o);
    eprintln!(
        "{case:?}: vs portable rel L1 {:.2e} max_abs {:.2e} LSE {:.2e}; vs emulation rel L1 {:.2e}",
        m.rel_l1, m.max_abs, lse_diff, m_ref.rel_l1
    );
    assert!(
        m.n_nan_mismatch == 0 && m.rel_l1 <= PORTABLE_REL_L1,
        "vs portable: {case:?} {m:?}"
    );
    assert!(
        lse_diff <= LSE_TOL,
        "LSE vs portable {lse_diff:.2e}: {case:?}"
    );
    assert!(
        m_ref.n_nan_mismatch == 0 && m_ref.rel_l1 <= EMULATION_REL_L1,
        "vs emulation: {case:?} {m_ref:?}"
    );
    // Rows that see no key (causal, i + kv_len < qo_len): output 0 and LSE -inf, exactly.
    for b in 0..case.batch {
        for h in 0..case.q_heads {
            for i in 0..case.qo_len {
                if case.causal && i + case.kv_len < case.qo_len {
                    let r = (b * case.q_heads + h) * case.qo_len + i;
                    assert_eq!(l_h[r], f32::NEG_INFINITY, "row {i} LSE: {case:?}");
                    assert!(
                        o_h[r * d..(r + 1) * d].iter().all(|&x| x == 0.0),
                        "row {i} output: {case:?}"
                    );
                }
            }
        }
    }
    let lse_ref = l_h
        .iter()
        .zip(&reference.lse)
        .map(|(&a, &b)| {
            if a as f64 == b {
                0.0
            } else {
                (a as f64 - b).abs()
            }
        })
        .fold(0.0, f64::max);
    assert!(
        lse_ref <= LSE_TOL,
        "LSE vs emulation {lse_ref:.2e}: {case:?}"
    );
}

/// A V that TMA cannot describe — a broadcast kv-head stride, as `expand` makes for GQA — sends
/// the f16 kernels to their per-thread cp.async copies. kv_len 1050 makes the d = 128 kernel's
/// last 128-key tile (keys 1024..1152) end past K's 64-row padding (1088): those rows must not be
/// read. Against the CPU emulation, output poisoned with NaN first; d = 64 and 256 (64-key tiles)
/// take the same copies.
#[test]
#[ignore = "needs a CUDA GPU"]
fn hopper_f16_copies_without_tma_match_emulation() {
    use cudarc::driver::DevicePtr;
    use sageattention::reference::HostTensor;
    use sageattention::{sageattn_into, TensorView};
    if skip_unless_hopper() {
        return;
    }
    let rt = runtime();
    let stream = rt.stream();
    let mut rng = fresh_rng("hopper_no_tma");
    let (q_heads, kv_heads, qo_len, kv_len) = (4, 2, 1050, 1050);
    for (d, causal) in [(128, false), (128, true), (64, false), (256, true)] {
        let offsets = channel_offsets(&mut rng, d, 2.0);
        let q = random_tensor(&mut rng, [1, q_heads, qo_len, d], DType::F16, 1.0, None);
        let k_shape = [1, kv_heads, kv_len, d];
        let k = random_tensor(&mut rng, k_shape, DType::F16, 1.0, Some(&offsets));
        let v_head = random_tensor(&mut rng, [1, 1, kv_len, d], DType::F16, 1.0, None);
        // Both kv heads read the same V: kv-head stride 0 on the host and on the device.
        let v = HostTensor::from_parts(v_head.data.clone(), k_shape, [kv_len * d, 0, d, 1]);
        let (qd, kd) = (
            upload(rt, &q, DType::F16, Layout::Hnd),
            upload(rt, &k, DType::F16, Layout::Hnd),
        );
        let v_f16: Vec<f16> = v_head.data.iter().map(|&x| f16::from_f32(x)).collect();
        let v_buf = stream.clone_htod(&v_f16).unwrap();
        let (v_ptr, _guard) = v_buf.device_ptr(stream);
        let v_strides = [(kv_len * d) as i64, 0, d as i64, 1];
        // SAFETY: `v_buf` holds kv_len × d f16 values, all the view addresses (its kv-head stride
        // is 0), and outlives the view.
        let vd = unsafe { TensorView::from_raw(v_ptr, DType::F16, k_shape, v_strides, 0) };
        let opts = Options {
            causal,
            ..Options::default()
        };
        let shape = [1, q_heads, qo_len, d];
        let mut out = Tensor::alloc_filled_nan(rt, DType::F16, shape, Layout::Hnd).unwrap();
        sageattn_into(
            rt,
            &qd.view(),
            &kd.view(),
            &vd,
            &mut out.view_mut(),
            None,
            &opts,
        )
        .unwrap();
        let o = out.to_host_f32(rt).unwrap();
        let ref_opts = RefOptions {
            causal,
            sm_scale: None,
        };
        // Smoothed K (the default), f32 P·V accumulation (the sm_90a kernel's, whatever pv_accum).
        let (smooth_k, pv_f16_accum) = (true, false);
        let reference =
            attention_quantized_emulation(&q, &k, &v, &ref_opts, smooth_k, pv_f16_accum);
        let m = compare(&o, &reference.o);
        eprintln!(
            "d {d} causal {causal}: vs emulation rel L1 {:.2e}",
            m.rel_l1
        );
        assert!(
            m.n_nan_mismatch == 0 && m.rel_l1 <= EMULATION_REL_L1,
            "d {d} causal {causal}: {m:?}"
        );
    }
}

/// Causal launches whose heads' K and V do not fit in L2 together run in head chunks, longest
/// first within each (`hopper::causal_chunk`): two chunks here, the second partial (its CTAs past
/// the last head leave at once), with qo_len < kv_len and GQA, against the portable kernel — on
/// the wide kernel (d = 128) and on the narrow one (d = 64, both lengths within
/// `hopper::narrow_max_len`).
#[test]
#[ignore = "needs a CUDA GPU"]
fn hopper_causal_head_chunks_match_portable() {
    if skip_unless_hopper() {
        return;
    }
    let rt = runtime();
    let mut rng = fresh_rng("hopper_causal_chunks");
    // 2K keys: 768 KiB of K and V per kv head at d = 128 (70 kv heads, 140 q heads per chunk in
    // the H200's L2; 192 pairs), 384 KiB at d = 64 (140 kv heads, 280 q heads; 384 pairs).
    for (head_dim, batch, narrow) in [(128, 3, false), (64, 6, true)] {
        let (q_heads, kv_heads, qo_len, kv_len) = (64, 32, 1500, 2048);
        assert_eq!(
            hopper::narrow_pays(head_dim, false, true, qo_len, kv_len),
            narrow
        );
        let chunk = hopper::causal_chunk(
            head_dim,
            (false, narrow),
            qo_len,
            q_heads,
            kv_len,
            kv_heads,
            batch,
            rt.l2_bytes(),
        ) as usize;
        let pairs = batch * q_heads;
        assert!(
            chunk > 0 && chunk < pairs && pairs % chunk != 0,
            "d{head_dim}: chunk {chunk} of {pairs} pairs: not several chunks with a partial last one"
        );
        let case = Case {
            batch,
            q_heads,
            kv_heads,
            qo_len,
            kv_len,
            head_dim,
            causal: true,
            in_dtype: DType::F16,
            out_dtype: DType::F16,
            layout: Layout::Hnd,
            smooth_k: true,
        };
        check_case_with(case, &mut rng, false);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn hopper_attention_matches_portable_and_emulation() {
    if skip_unless_hopper() {
        return;
    }
    let mut rng = fresh_rng("hopper_attention");
    let (f16o, bf16o) = (DType::F16, DType::BF16);
    let (f16i, bf16i) = (DType::F16, DType::BF16);
    let (hnd, nhd) = (Layout::Hnd, Layout::Nhd);
    #[rustfmt::skip]
    let cases = [
        // batch, q_heads, kv_heads, qo_len, kv_len, head_dim, causal, in, out dtype, layout, smooth_k
        (1, 2, 1, 1, 1, 64, false, f16i, f16o, hnd, true),
        (1, 2, 2, 63, 63, 128, true, f16i, bf16o, hnd, true),
        (2, 4, 2, 65, 200, 64, true, bf16i, f16o, nhd, false),
        (1, 4, 1, 200, 65, 128, true, f16i, f16o, hnd, true),
        (1, 2, 2, 1000, 1000, 128, false, f16i, bf16o, nhd, true),
        (1, 2, 2, 1000, 1000, 128, true, bf16i, f16o, hnd, false),
        (1, 2, 1, 1000, 333, 64, true, f16i, f16o, hnd, true),
        (1, 2, 2, 200, 1000, 128, false, f16i, f16o, nhd, false),
        (1, 1, 1, 1, 1000, 128, true, bf16i, bf16o, hnd, true),
        (1, 3, 3, 1000, 1, 64, false, f16i, f16o, hnd, true),
        (1, 8, 1, 300, 300, 64, false, f16i, bf16o, hnd, true),
        (2, 2, 1, 129, 700, 128, true, bf16i, f16o, nhd, true),
        // The native d = 96 kernel (and 72/80/88, zero-padded to 96): partial tiles, GQA,
        // qo_len != kv_len, rows without keys, bf16 in and out, both layouts.
        (1, 2, 2, 63, 63, 96, false, f16i, f16o, hnd, true),
        (1, 4, 1, 200, 65, 96, true, f16i, bf16o, nhd, true),
        (2, 4, 2, 1000, 1000, 96, true, bf16i, f16o, hnd, false),
        (1, 2, 2, 200, 1000, 96, false, bf16i, bf16o, nhd, true),
        (1, 1, 1, 1, 1000, 96, true, f16i, f16o, hnd, true),
        (2, 8, 2, 333, 257, 80, true, f16i, f16o, hnd, true),
        (1, 2, 1, 129, 700, 80, false, bf16i, f16o, nhd, false),
        (1, 3, 3, 1000, 1, 72, false, f16i, bf16o, hnd, true),
        (1, 2, 2, 190, 190, 88, true, bf16i, bf16o, nhd, true),
        // Causal f16 calls up to `hopper::narrow_max_len` (2K at d = 64, 1K at 96 / 128) run the
        // narrow kernels (every causal case above, and d = 64 between 1K and 2K here); the others
        // run the wide ones, at the boundary and past it.
        (1, 2, 1, 1024, 1025, 128, true, f16i, f16o, hnd, true),
        (1, 2, 2, 1100, 1300, 64, true, bf16i, f16o, nhd, true),
        (1, 2, 1, 2000, 2049, 64, true, f16i, f16o, hnd, true),
        (1, 4, 2, 1025, 1025, 96, true, f16i, bf16o, hnd, false),
    ];
    for (
        batch,
        q_heads,
        kv_heads,
        qo_len,
        kv_len,
        head_dim,
        causal,
        in_dtype,
        out_dtype,
        layout,
        smooth_k,
    ) in cases
    {
        check_case(
            Case {
                batch,
                q_heads,
                kv_heads,
                qo_len,
                kv_len,
                head_dim,
                causal,
                in_dtype,
                out_dtype,
                layout,
                smooth_k,
            },
            &mut rng,
        );
    }
}

/// Kernel-only TOPS (4·B·H·N²·d / time, halved for causal) of the sm_90a kernel and of the
/// portable kernel (both PV accumulators) on the same prepared inputs: B = 4, H = 32, N = 8192.
#[test]
#[ignore = "needs a CUDA GPU"]
fn hopper_perf_probe() {
    if skip_unless_hopper() {
        return;
    }
    let rt = runtime();
    eprintln!("device: {:?}", rt.device_info().unwrap());
    let (batch, heads, seq) = (4usize, 32usize, 8192usize);
    let sm90_only = std::env::var_os("SAGE_SM90_ONLY").is_some_and(|v| v != "0");
    for &(head_dim, causal) in &[(128usize, false), (128, true), (64, false)] {
        let shape = [batch, heads, seq, head_dim];
        let (q, k, v) = (
            random_device_tensor(shape, 1),
            random_device_tensor(shape, 2),
            random_device_tensor(shape, 3),
        );
        let mut out = Tensor::alloc(rt, DType::F16, shape, Layout::Hnd).unwrap();
        let ops = 4.0
            * (batch * heads) as f64
            * (seq * seq) as f64
            * head_dim as f64
            * if causal { 0.5 } else { 1.0 };
        let tops = |ms: f32| ops / (ms as f64 * 1e-3) / 1e12;
        let mut line = format!("PERF d={head_dim} N={seq} B={batch} H={heads} causal={causal}:");
        for pv in [PvAccum::F16, PvAccum::F32] {
            let opts = Options {
                causal,
                pv_accum: pv,
                backend: Backend::Portable,
                ..Options::default()
            };
            let prepared = Prepared::new(rt, &q.view(), &k.view(), &v.view(), &opts).unwrap();
            // SAGE_SM90_ONLY=1 times the sm_90a kernel alone (saves device time while tuning it).
            if !sm90_only {
                let ms = median_ms(|| {
                    prepared
                        .attend_into(rt, &v.view(), &mut out.view_mut(), None)
                        .unwrap()
                });
                line += &format!(" portable({pv:?}) {ms:.3} ms {:.0} TOPS;", tops(ms));
            }
            if pv == PvAccum::F32 {
                let auto = Options {
                    backend: Backend::Auto,
                    ..opts
                };
                let prepared_h = Prepared::new(rt, &q.view(), &k.view(), &v.view(), &auto).unwrap();
                let ms = median_ms(|| {
                    prepared_h
                        .attend_into(rt, &v.view(), &mut out.view_mut(), None)
                        .unwrap()
                });
                line += &format!(" sm90 {ms:.3} ms {:.0} TOPS", tops(ms));
            }
        }
        eprintln!("{line}");
    }
}

/// The sm_90a kernels quantize the caller's Q themselves in `sageattn` (no Q job in the
/// preparation, `kernels-gpu/src/hopper/q_tile.rs`), while a `Prepared` hands them the Q the
/// preparation quantized. Both must give the same bits: the output and the LSE of the two routes
/// are compared for exact equality (so the in-kernel INT8 values and per-token scales equal the
/// preparation's, which `gpu_prep` proves bit-exact with the CPU emulation). Covers every sm_90a
/// kernel (d 64/96/128/256, f16 and 8-bit P·V), zero-padded sizes (32, 48, 72, 80, 160; 96 with
/// the 8-bit P·V), f16/bf16,
/// causal, GQA, qo_len ≠ kv_len, partial and empty CTAs (3 warpgroups of 64 rows at d = 128),
/// NHD, a Q view with a padded row stride, and rows of Q 40 times larger than the rest.
#[test]
#[ignore = "needs a CUDA GPU"]
fn hopper_in_kernel_q_equals_prepared_q() {
    if skip_unless_hopper() {
        return;
    }
    let rt = runtime();
    let mut rng = fresh_rng("hopper_in_kernel_q");
    let (f16i, bf16i) = (DType::F16, DType::BF16);
    let (hnd, nhd) = (Layout::Hnd, Layout::Nhd);
    let (f16p, int8p) = (PvPrecision::F16, PvPrecision::Int8);
    #[rustfmt::skip]
    let cases = [
        // batch, q_heads, kv_heads, qo_len, kv_len, head_dim, causal, dtype, layout, precision, padded Q rows
        (1, 2, 1, 1, 1, 64, false, f16i, hnd, f16p, false),
        (2, 4, 2, 333, 300, 128, true, f16i, nhd, f16p, true),
        (1, 2, 2, 200, 1000, 128, false, bf16i, hnd, f16p, false),
        (1, 4, 1, 129, 129, 256, true, f16i, hnd, f16p, true),
        (1, 2, 2, 300, 77, 160, false, bf16i, nhd, f16p, false),
        (1, 2, 1, 65, 500, 96, true, f16i, hnd, f16p, true),
        (1, 2, 2, 100, 100, 32, false, f16i, hnd, f16p, false),
        (1, 2, 2, 257, 257, 80, true, bf16i, nhd, f16p, false),
        (1, 2, 2, 190, 190, 48, false, f16i, hnd, f16p, false),
        (2, 4, 2, 333, 300, 128, true, f16i, nhd, int8p, true),
        (1, 3, 1, 200, 700, 64, false, bf16i, hnd, int8p, false),
        (1, 2, 2, 129, 129, 96, true, f16i, hnd, int8p, false),
        // The native d = 96 kernel: full, GQA, bf16, partial CTAs; 72 zero-padded to it.
        (2, 4, 1, 333, 1000, 96, false, bf16i, nhd, f16p, true),
        (1, 2, 2, 1, 77, 96, false, f16i, hnd, f16p, false),
        (1, 2, 1, 200, 150, 72, true, f16i, nhd, f16p, false),
    ];
    for (batch, q_heads, kv_heads, qo_len, kv_len, d, causal, dtype, layout, precision, pad_rows) in
        cases
    {
        let what = format!(
            "b{batch} hq{q_heads} hkv{kv_heads} qo{qo_len} kv{kv_len} d{d} causal {causal} \
             {dtype:?} {layout:?} {precision:?} padded Q rows {pad_rows}"
        );
        // Q wider than d when its rows are padded (the view narrows it: row stride d + 16); a few
        // rows 40 times larger, so that per-token scales differ widely.
        let q_width = if pad_rows { d + 16 } else { d };
        let mut q = random_tensor(
            &mut rng,
            [batch, q_heads, qo_len, q_width],
            dtype,
            1.0,
            None,
        );
        for i in (0..qo_len).step_by(7) {
            for c in 0..q_width {
                let x = q.get(0, 0, i, c);
                q.set(0, 0, i, c, x * 40.0);
            }
        }
        let k = random_tensor(&mut rng, [batch, kv_heads, kv_len, d], dtype, 1.0, None);
        let v = random_tensor(&mut rng, [batch, kv_heads, kv_len, d], dtype, 1.0, None);
        let (qd, kd, vd) = (
            upload(rt, &q, dtype, layout),
            upload(rt, &k, dtype, layout),
            upload(rt, &v, dtype, layout),
        );
        let q_full = qd.view();
        let q_view = q_full.narrow(3, 0, d).unwrap();
        let opts = Options {
            causal,
            layout,
            pv_precision: precision,
            return_lse: true,
            ..Options::default()
        };
        let kernel = sageattention::attention::selected_kernel(rt, d, &opts).unwrap();
        assert!(kernel.quantizes_q(), "{what}: {kernel:?}");
        let shape = [batch, q_heads, qo_len, d];
        let rows = batch * q_heads * qo_len;
        let mut out_k = Tensor::alloc_filled_nan(rt, dtype, shape, layout).unwrap();
        let mut out_p = Tensor::alloc_filled_nan(rt, dtype, shape, layout).unwrap();
        let mut lse_k = rt.stream().clone_htod(&vec![f32::NAN; rows]).unwrap();
        let mut lse_p = rt.stream().clone_htod(&vec![f32::NAN; rows]).unwrap();
        sageattention::sageattn_into(
            rt,
            &q_view,
            &kd.view(),
            &vd.view(),
            &mut out_k.view_mut(),
            Some(&mut lse_k),
            &opts,
        )
        .unwrap();
        Prepared::new(rt, &q_view, &kd.view(), &vd.view(), &opts)
            .unwrap()
            .attend_into(rt, &vd.view(), &mut out_p.view_mut(), Some(&mut lse_p))
            .unwrap();
        let (o_k, o_p) = (
            out_k.to_host_f32(rt).unwrap(),
            out_p.to_host_f32(rt).unwrap(),
        );
        let (l_k, l_p) = (
            rt.stream().clone_dtoh(&lse_k).unwrap(),
            rt.stream().clone_dtoh(&lse_p).unwrap(),
        );
        assert!(
            o_p.iter().all(|x| x.is_finite()),
            "{what}: prepared route not finite"
        );
        let differing = bit_differences(&o_k, &o_p);
        assert_eq!(
            differing,
            0,
            "{what}: {differing} of {} outputs differ",
            o_k.len()
        );
        let lse_differing = bit_differences(&l_k, &l_p);
        assert_eq!(
            lse_differing, 0,
            "{what}: {lse_differing} LSE values differ"
        );
        eprintln!(
            "{what}: {} outputs and {rows} LSE values identical",
            o_k.len()
        );
    }
}

/// Scores that jump late in a row: the f16 kernels take an unmasked tile's probabilities against
/// the running max without reducing the tile's max first, and take the tile again from its
/// scores when one passes that max by 2^14 or more (`OnlineSoftmax::probabilities_against_max`).
/// One key late in the sequence scores 0 to about 20 log2 units above the others (finite, the
/// retry with a rescale) or up to about 200 (an infinite probability in the first pass)
/// (`common::late_score_jump_inputs`). Against the CPU emulation, output poisoned with NaN and
/// LSE first, d = 64 / 96 / 128, causal and not, and d = 256, whose kernel keeps the exact path
/// (`hopper::attention::f16_probs_against_max`).
#[test]
#[ignore = "needs a CUDA GPU"]
fn hopper_f16_late_score_jumps_match_emulation() {
    if skip_unless_hopper() {
        return;
    }
    let mut rng = fresh_rng("hopper_score_jumps");
    for (d, causal, jump) in [
        (128, false, 20.0f32),
        (128, true, 200.0),
        (64, false, 200.0),
        (96, true, 20.0),
        (256, false, 20.0),
    ] {
        let opts = Options {
            causal,
            ..Options::default()
        };
        let [q, k, v] = common::late_score_jump_inputs(&mut rng, [4, 2, 2000, d], 1700, jump);
        common::check_f16_against_emulation(
            [&q, &k, &v],
            &opts,
            false,
            &format!("d {d} causal {causal} jump {jump}"),
            (EMULATION_REL_L1, LSE_TOL),
        );
    }
}

/// Scores that rise steadily along the keys (`bench --inputs recency`'s shape: channel 0 of Q
/// about 8, channel 0 of key j 0.098·j, so ≈ 0.1 log2 units per key at d = 128): every unmasked
/// tile taken against the lagging max passes it by far more than 2^14 and is taken again (and,
/// with a backoff after retries, the following tiles go straight to the exact softmax). Against
/// the CPU emulation, output and LSE poisoned first, d = 64 / 128, causal and not, GQA, a tail.
#[test]
#[ignore = "needs a CUDA GPU"]
fn hopper_f16_steady_score_slope_matches_emulation() {
    if skip_unless_hopper() {
        return;
    }
    let mut rng = fresh_rng("hopper_score_slope");
    for (d, causal) in [(128, true), (128, false), (64, true), (64, false)] {
        let [q, k, v] = common::steady_slope_inputs(&mut rng, [4, 2, 2000, d]);
        let opts = Options {
            causal,
            ..Options::default()
        };
        common::check_f16_against_emulation(
            [&q, &k, &v],
            &opts,
            false,
            &format!("d {d} causal {causal} steady slope"),
            (EMULATION_REL_L1, LSE_TOL),
        );
    }
}
