//! Timing of the preparation (K mean, Q/K quantization, LSE bias, V to f16 or to the 8-bit Vᵀ):
//! `prep_perf_probe` prints the table of docs/perf-notes.md "Preparation v4" — at B = 4, H = 32,
//! d = 128, f16, N = 1K/2K/4K, for the f16 and the 8-bit P·V: GPU time of the attention kernel
//! alone, of the preparation alone and of the whole `sageattn_into`, and the host's enqueue time
//! of both, measured with the GPU kept busy (see [`timed`]).
//!
//! It uses only the public API (and `tests/common`), so the same file can be copied onto an
//! older commit to time the preparation before a change.
//!
//! Run on a GPU with `cargo test --release --test gpu_prep -- --ignored --nocapture
//! --test-threads=1`.

mod common;

use std::time::Instant;

use common::{random_device_tensor, runtime};
use sageattention::hopper::hopper_available;
use sageattention::{sageattn_into, DType, Layout, Options, Prepared, PvPrecision, Tensor};

/// Per-call GPU time and host enqueue time of `op`, in µs (medians over 7 rounds): each round
/// enqueues `filler` first, so that the GPU is busy while the host enqueues `reps` calls of `op`
/// between two events; the events then time the calls back to back on the GPU, and the host's
/// wall-clock time of the enqueue is measured without waiting for the GPU. Also returns whether
/// every round's enqueue finished before the filler did (else the GPU time includes waiting for
/// the host, and the filler should be made longer).
fn timed(filler: &mut dyn FnMut(), op: &mut dyn FnMut(), reps: usize) -> (f64, f64, bool) {
    let rt = runtime();
    let stream = rt.stream();
    let event = || {
        stream
            .record_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
            .unwrap()
    };
    for _ in 0..3 {
        op();
    }
    rt.synchronize().unwrap();
    let (mut gpu, mut host, mut gpu_bound) = (Vec::new(), Vec::new(), true);
    for _ in 0..7 {
        let filler_start = event();
        filler();
        let start = event();
        let t0 = Instant::now();
        for _ in 0..reps {
            op();
        }
        let host_s = t0.elapsed().as_secs_f64();
        let end = event();
        end.synchronize().unwrap();
        let filler_ms = f64::from(filler_start.elapsed_ms(&start).unwrap());
        gpu_bound &= host_s * 1e3 < filler_ms;
        gpu.push(f64::from(start.elapsed_ms(&end).unwrap()) * 1e3 / reps as f64);
        host.push(host_s * 1e6 / reps as f64);
    }
    let median = |mut x: Vec<f64>| {
        x.sort_by(f64::total_cmp);
        x[x.len() / 2]
    };
    (median(gpu), median(host), gpu_bound)
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn prep_perf_probe() {
    let rt = runtime();
    eprintln!("device: {:?}", rt.device_info().unwrap());
    let (b, h, d) = (4usize, 32usize, 128usize);
    // The filler: one N = 8K call (≈ 7 ms on an H200), far longer than the host needs to enqueue
    // `REPS` calls.
    const REPS: usize = 20;
    let big = [b, h, 8192, d];
    let (fq, fk, fv) = (
        random_device_tensor(big, 21),
        random_device_tensor(big, 22),
        random_device_tensor(big, 23),
    );
    let mut fout = Tensor::alloc(rt, DType::F16, big, Layout::Hnd).unwrap();
    let mut filler = || {
        sageattn_into(
            rt,
            &fq.view(),
            &fk.view(),
            &fv.view(),
            &mut fout.view_mut(),
            None,
            &Options::default(),
        )
        .unwrap()
    };
    let precisions: &[PvPrecision] = if hopper_available(rt) {
        &[PvPrecision::F16, PvPrecision::Int8]
    } else {
        eprintln!("not a compute capability 9.0 GPU: the Int8 rows are skipped");
        &[PvPrecision::F16]
    };
    eprintln!(
        "PREP | N | P·V | kernel µs | prep µs | full µs | full−kernel µs | prep share | full TOPS | host full µs | host prep µs | GPU-bound"
    );
    for n in [1024usize, 2048, 4096] {
        let shape = [b, h, n, d];
        let (q, k, v) = (
            random_device_tensor(shape, 1),
            random_device_tensor(shape, 2),
            random_device_tensor(shape, 3),
        );
        let mut out = Tensor::alloc(rt, DType::F16, shape, Layout::Hnd).unwrap();
        let ops = 4.0 * (b * h) as f64 * (n as f64).powi(2) * d as f64;
        for &pv_precision in precisions {
            let opts = Options {
                pv_precision,
                ..Options::default()
            };
            let prepared = Prepared::new(rt, &q.view(), &k.view(), &v.view(), &opts).unwrap();
            let (kernel, _, ok_kernel) = timed(
                &mut filler,
                &mut || {
                    prepared
                        .attend_into(rt, &v.view(), &mut out.view_mut(), None)
                        .unwrap()
                },
                REPS,
            );
            // The preparation alone: `Prepared::new` (validation, a stream-ordered allocation and
            // free, the preparation launches).
            let (prep, host_prep, ok_prep) = timed(
                &mut filler,
                &mut || drop(Prepared::new(rt, &q.view(), &k.view(), &v.view(), &opts).unwrap()),
                REPS,
            );
            let (full, host_full, ok_full) = timed(
                &mut filler,
                &mut || {
                    sageattn_into(
                        rt,
                        &q.view(),
                        &k.view(),
                        &v.view(),
                        &mut out.view_mut(),
                        None,
                        &opts,
                    )
                    .unwrap()
                },
                REPS,
            );
            eprintln!(
                "PREP | {n} | {pv_precision:?} | {kernel:.1} | {prep:.1} | {full:.1} | {:.1} | {:.1}% | {:.0} | {host_full:.1} | {host_prep:.1} | {}",
                full - kernel,
                100.0 * (full - kernel) / full,
                ops / (full * 1e-6) / 1e12,
                if ok_kernel && ok_prep && ok_full { "yes" } else { "NO (host-bound)" },
            );
        }
    }
}
