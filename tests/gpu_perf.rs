//! A quick timing probe (the full benchmark is `cargo run --release --bin bench`): median time of
//! the attention kernel alone and of the full call at a few shapes, printed as TOPS. Run on a GPU
//! with `--ignored --nocapture perf_`.

mod common;

use common::{full_call_ms, kernel_and_full_ms, median_ms, random_qkv, runtime};
use sageattention::{sageattn_into, DType, Layout, Options, Prepared, PvAccum, Tensor};

#[test]
#[ignore = "needs a CUDA GPU"]
fn perf_probe() {
    let rt = runtime();
    eprintln!("device: {:?}", rt.device_info().unwrap());
    for &(head_dim, seq, causal) in &[
        (128usize, 8192usize, false),
        (128, 16384, true),
        (64, 8192, false),
        (128, 1024, false),
        (96, 8192, false),
    ] {
        let (b, h) = (4usize, 32usize);
        let shape = [b, h, seq, head_dim];
        let (q, k, v) = random_qkv(shape, [1, 2, 3]);
        let mut out = Tensor::alloc(rt, DType::F16, shape, Layout::Hnd).unwrap();
        let flops = 4.0 * (b * h) as f64 * (seq as f64).powi(2) * head_dim as f64
            / if causal { 2.0 } else { 1.0 };
        for pv_accum in [PvAccum::F16, PvAccum::F32] {
            let opts = Options {
                causal,
                pv_accum,
                ..Options::default()
            };
            let (kernel, full) = kernel_and_full_ms(&q, &k, &v, &mut out, &opts);
            eprintln!(
                "PERF d={head_dim} N={seq} causal={causal} {pv_accum:?}: kernel {kernel:.3} ms = {:.0} TOPS, full {full:.3} ms = {:.0} TOPS, quant {:.1}%",
                flops / kernel as f64 / 1e9,
                flops / full as f64 / 1e9,
                100.0 * (full - kernel) / full
            );
        }
    }
}

/// The preparation kernels at N = 1K, or `SAGE_PREP_N` (for `ncu --metrics gpu__time_duration.sum`): a few full
/// calls, d = 128, B = 4, H = 32.
#[test]
#[ignore = "needs a CUDA GPU"]
fn perf_prepare_small() {
    let rt = runtime();
    let n: usize = std::env::var("SAGE_PREP_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1024);
    let shape = [4, 32, n, 128];
    let (q, k, v) = random_qkv(shape, [1, 2, 3]);
    let mut out = Tensor::alloc(rt, DType::F16, shape, Layout::Hnd).unwrap();
    let opts = Options::default();
    let full = full_call_ms(&q, &k, &v, &mut out, &opts);
    let prepare =
        median_ms(|| drop(Prepared::new(rt, &q.view(), &k.view(), &v.view(), &opts).unwrap()));
    rt.synchronize().unwrap();
    let t0 = std::time::Instant::now();
    for _ in 0..20 {
        sageattn_into(
            rt,
            &q.view(),
            &k.view(),
            &v.view(),
            &mut out.view_mut(),
            None,
            &opts,
        )
        .unwrap();
    }
    let host_us = t0.elapsed().as_secs_f64() * 1e6 / 20.0;
    rt.synchronize().unwrap();
    eprintln!("PREP d=128 N={n}: full {full:.3} ms, prepare alone {prepare:.3} ms, host enqueue {host_us:.0} us");
}

/// The portable (mma.sync) kernel alone, forced with `Backend::Portable`, at N = 8K.
#[test]
#[ignore = "needs a CUDA GPU"]
fn perf_portable() {
    let rt = runtime();
    for head_dim in [64usize, 96, 128] {
        let (b, h, seq) = (4usize, 32usize, 8192usize);
        let shape = [b, h, seq, head_dim];
        let (q, k, v) = random_qkv(shape, [1, 2, 3]);
        let mut out = Tensor::alloc(rt, DType::F16, shape, Layout::Hnd).unwrap();
        let flops = 4.0 * (b * h) as f64 * (seq as f64).powi(2) * head_dim as f64;
        for pv_accum in [PvAccum::F16, PvAccum::F32] {
            let opts = Options {
                pv_accum,
                backend: sageattention::Backend::Portable,
                ..Options::default()
            };
            let prepared = Prepared::new(rt, &q.view(), &k.view(), &v.view(), &opts).unwrap();
            let ms = median_ms(|| {
                prepared
                    .attend_into(rt, &v.view(), &mut out.view_mut(), None)
                    .unwrap()
            });
            eprintln!(
                "PORTABLE d={head_dim} N={seq} {pv_accum:?}: {ms:.3} ms = {:.0} TOPS",
                flops / ms as f64 / 1e9
            );
        }
    }
}
