//! Shared helpers of the GPU tests: one runtime per test binary, random inputs rounded to the
//! device dtype, upload/download between `HostTensor` and device tensors, packed (varlen)
//! inputs, and the LSE comparison.
#![allow(dead_code)]

use std::sync::OnceLock;

use cudarc::driver::CudaSlice;
use half::{bf16, f16};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;
use sageattention::reference::{attention_quantized_emulation, compare, HostTensor, RefOptions};
use sageattention::{sageattn_into, DType, Error, Layout, Options, Prepared, Runtime, Tensor};

/// The runtime shared by every test of the binary (module load and PTX JIT happen once).
pub fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| Runtime::new(0).expect("a CUDA GPU (these tests are #[ignore]d without one)"))
}

/// A fresh seed per call, printed so a failure can be replayed with `SAGE_TEST_SEED`.
pub fn fresh_rng(label: &str) -> StdRng {
    let seed = std::env::var("SAGE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen::<u64>());
    eprintln!("[{label}] seed {seed}");
    StdRng::seed_from_u64(seed)
}

/// Two V channels of bf16 subnormals (multiples of 2^-133, bf16's subnormal step) within 2^-128
/// of their means, so that the 8-bit V's `V_MAX / amax` overflows f32 (docs/design.md, "8-bit P·V"
/// 2: `inv` must be 0 and the bytes 0, not NaN or ±448): channel 5 of the first (batch, head) with
/// values equal to its mean (`0 · ∞`), channel 9 of the last with none (`±∞`). head_dim ≥ 10.
pub fn subnormal_v_channels(v: &mut HostTensor) {
    let tiny = 2f32.powi(-133);
    let (batch, heads) = (v.batch(), v.heads());
    for key in 0..v.seq() {
        v.set(0, 0, key, 5, (key % 3) as f32 * tiny);
        v.set(batch - 1, heads - 1, key, 9, (key % 2) as f32 * tiny);
    }
}

/// Rounds to what the device dtype can hold, so the CPU reference sees exactly the GPU's inputs.
pub fn round_to(dtype: DType, x: f32) -> f32 {
    match dtype {
        DType::F16 => f16::from_f32(x).to_f32(),
        DType::BF16 => bf16::from_f32(x).to_f32(),
        _ => x,
    }
}

/// Logical-order (HND-contiguous) tensor of `scale * N(0,1) + offset[d]`, rounded to `dtype`.
pub fn random_tensor(
    rng: &mut StdRng,
    shape: [usize; 4],
    dtype: DType,
    scale: f32,
    offset: Option<&[f32]>,
) -> HostTensor {
    HostTensor::from_fn(shape, false, |_, _, _, d| {
        let z: f32 = StandardNormal.sample(rng);
        round_to(dtype, scale * z + offset.map_or(0.0, |o| o[d]))
    })
}

/// Per-channel offsets `amp * N(0,1)`, one per head_dim channel.
pub fn channel_offsets(rng: &mut StdRng, head_dim: usize, amp: f32) -> Vec<f32> {
    (0..head_dim)
        .map(|_| {
            let z: f32 = StandardNormal.sample(rng);
            amp * z
        })
        .collect::<Vec<_>>()
}

/// Uploads a logical-order host tensor in `layout`.
pub fn upload(rt: &Runtime, t: &HostTensor, dtype: DType, layout: Layout) -> Tensor {
    let logical: Vec<f32> = (0..t.batch())
        .flat_map(|b| {
            (0..t.heads()).flat_map(move |h| {
                (0..t.seq()).flat_map(move |s| (0..t.head_dim()).map(move |d| (b, h, s, d)))
            })
        })
        .map(|(b, h, s, d)| t.get(b, h, s, d))
        .collect();
    Tensor::from_host_f32(rt, &logical, dtype, t.shape, layout).expect("upload")
}

/// A device tensor of approximately N(0,1) values (a sum of 4 uniforms), generated in parallel
/// on the host from `seed`: fast enough for the large shapes of the timing tests.
pub fn random_device_tensor(shape: [usize; 4], seed: u64) -> Tensor {
    random_device_tensor_in(shape, seed, Layout::Hnd)
}

/// [`random_device_tensor`] stored in `layout` (the same logical values).
pub fn random_device_tensor_in(shape: [usize; 4], seed: u64, layout: Layout) -> Tensor {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n)
        .into_par_iter()
        .map(|i| {
            // splitmix64 → two uniforms → one approximately normal value (sum of 4 uniforms).
            let mut x = (i as u64).wrapping_add(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut acc = 0.0f32;
            for _ in 0..4 {
                x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = x;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^= z >> 31;
                acc += (z >> 40) as f32 / (1u64 << 24) as f32;
            }
            (acc - 2.0) * 1.732
        })
        .collect();
    Tensor::from_host_f32(runtime(), &data, DType::F16, shape, layout).unwrap()
}

/// Median GPU time (CUDA events) of `f` over 15 runs after 3 warm-up runs.
pub fn median_ms(mut f: impl FnMut()) -> f32 {
    let rt = runtime();
    let stream = rt.stream();
    for _ in 0..3 {
        f();
    }
    let mut times = Vec::new();
    for _ in 0..15 {
        let start = stream
            .record_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
            .unwrap();
        f();
        let end = stream
            .record_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
            .unwrap();
        end.synchronize().unwrap();
        times.push(start.elapsed_ms(&end).unwrap());
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    times[times.len() / 2]
}

/// Three device tensors of `random_device_tensor(shape, seed)`, one per seed (Q, K, V).
pub fn random_qkv(shape: [usize; 4], seeds: [u64; 3]) -> (Tensor, Tensor, Tensor) {
    (
        random_device_tensor(shape, seeds[0]),
        random_device_tensor(shape, seeds[1]),
        random_device_tensor(shape, seeds[2]),
    )
}

/// Median time of the whole call (`sageattn_into`: preparation + attention).
pub fn full_call_ms(q: &Tensor, k: &Tensor, v: &Tensor, out: &mut Tensor, opts: &Options) -> f32 {
    let rt = runtime();
    median_ms(|| {
        sageattn_into(
            rt,
            &q.view(),
            &k.view(),
            &v.view(),
            &mut out.view_mut(),
            None,
            opts,
        )
        .unwrap()
    })
}

/// Median times of the attention kernel alone (`Prepared::attend_into`) and of the whole call
/// (`full_call_ms`), in that order.
pub fn kernel_and_full_ms(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &mut Tensor,
    opts: &Options,
) -> (f32, f32) {
    let rt = runtime();
    let prepared = Prepared::new(rt, &q.view(), &k.view(), &v.view(), opts).unwrap();
    let kernel = median_ms(|| {
        prepared
            .attend_into(rt, &v.view(), &mut out.view_mut(), None)
            .unwrap()
    });
    let full = full_call_ms(q, k, v, out, opts);
    (kernel, full)
}

/// Uploads Q, K, V (logical order) as `dtype` in `layout` and runs `sageattn_into` into an output
/// of `out_dtype` in `out_layout` (Q's shape) and an LSE, both poisoned with NaN first; returns O
/// and LSE as f32 (logical order).
pub fn run_poisoned(
    [q, k, v]: [&HostTensor; 3],
    dtype: DType,
    layout: Layout,
    out_dtype: DType,
    out_layout: Layout,
    opts: &Options,
) -> Result<(Vec<f32>, Vec<f32>), Error> {
    let rt = runtime();
    let (qd, kd, vd) = (
        upload(rt, q, dtype, layout),
        upload(rt, k, dtype, layout),
        upload(rt, v, dtype, layout),
    );
    let mut out = Tensor::alloc_filled_nan(rt, out_dtype, q.shape, out_layout).unwrap();
    let rows = q.batch() * q.heads() * q.seq();
    let mut lse = rt.stream().clone_htod(&vec![f32::NAN; rows]).unwrap();
    sageattn_into(
        rt,
        &qd.view(),
        &kd.view(),
        &vd.view(),
        &mut out.view_mut(),
        Some(&mut lse),
        opts,
    )?;
    let out = out.to_host_f32(rt).unwrap();
    let lse = rt.stream().clone_dtoh(&lse).unwrap();
    Ok((out, lse))
}

/// Q, K, V of `shape` as f16 device buffers of zeros but for the last batch entry, N(0,1) values
/// rounded to f16 (for the tests past 2^31 elements); returns those last entries
/// (`[1, heads, seq, head_dim]`) and the three buffers.
pub fn zeros_but_last_batch(
    rng: &mut StdRng,
    shape: [usize; 4],
) -> (Vec<HostTensor>, Vec<CudaSlice<f16>>) {
    let stream = runtime().stream();
    let [_, heads, seq, head_dim] = shape;
    let n: usize = shape.iter().product();
    let last = [1, heads, seq, head_dim];
    let per_batch = heads * seq * head_dim;
    let mut host = Vec::new();
    let mut slices = Vec::new();
    for _ in 0..3 {
        let t = random_tensor(rng, last, DType::F16, 1.0, None);
        let mut dev = stream.alloc_zeros::<f16>(n).unwrap();
        let data: Vec<f16> = t.data.iter().map(|&x| f16::from_f32(x)).collect();
        stream
            .memcpy_htod(&data, &mut dev.slice_mut(n - per_batch..n))
            .unwrap();
        host.push(t);
        slices.push(dev);
    }
    (host, slices)
}

/// The sequences (each `[1, heads, len, head_dim]`) packed NHD, `[1, heads, total, head_dim]`,
/// rows `row_pad` elements apart beyond `heads * head_dim` (a multiple of 8 keeps device rows
/// 16-byte aligned).
pub fn pack(parts: &[HostTensor], row_pad: usize) -> HostTensor {
    let [_, heads, _, head_dim] = parts[0].shape;
    let total: usize = parts.iter().map(HostTensor::seq).sum();
    let row = heads * head_dim + row_pad;
    let strides = [total * row, head_dim, row, 1];
    let mut packed = HostTensor::with_strides([1, heads, total, head_dim], strides);
    let mut start = 0;
    for part in parts {
        for h in 0..heads {
            for s in 0..part.seq() {
                for d in 0..head_dim {
                    packed.set(0, h, start + s, d, part.get(0, h, s, d));
                }
            }
        }
        start += part.seq();
    }
    packed
}

/// `cu_seqlens` of sequences of these lengths: `[0, l0, l0 + l1, …]`.
pub fn prefix_sums(lens: impl IntoIterator<Item = usize>) -> Vec<i32> {
    let mut cu = vec![0i32];
    for len in lens {
        cu.push(cu.last().unwrap() + len as i32);
    }
    cu
}

/// How many elements of `a` and `b` differ in their bits (NaN payloads included), counting a
/// length difference as that many elements: 0 means bit-for-bit equal.
pub fn bit_differences(a: &[f32], b: &[f32]) -> usize {
    let differing = a
        .iter()
        .zip(b)
        .filter(|(x, y)| x.to_bits() != y.to_bits())
        .count();
    differing + a.len().abs_diff(b.len())
}

/// Q, K, V (f16, HND, one batch) whose scores jump late in a row, for the f16 kernels' tiles
/// taken against the running max: most keys score about 0 (p ≈ 1 each, so the earlier keys keep
/// a large share of every row), and key `spike` has channel 0 large, against a channel-0
/// component of Q that grows from 0 to 4 across the rows, so its score passes the others by 0 to
/// about `jump` log2 units. Rows of one warp differ, so warps with and without a jump meet.
pub fn late_score_jump_inputs(
    rng: &mut StdRng,
    [q_heads, kv_heads, len, d]: [usize; 4],
    spike: usize,
    jump: f32,
) -> [HostTensor; 3] {
    // Score of the spike key in log2 units: q0 · a · log2(e) / sqrt(d), q0 up to 4.
    let a = jump / (4.0 * std::f32::consts::LOG2_E / (d as f32).sqrt());
    let noise = |rng: &mut StdRng| {
        let z: f32 = StandardNormal.sample(rng);
        0.3 * z
    };
    let q = HostTensor::from_fn([1, q_heads, len, d], false, |_, _, s, c| {
        let ramp = if c == 0 {
            4.0 * s as f32 / len as f32
        } else {
            0.0
        };
        round_to(DType::F16, noise(rng) + ramp)
    });
    let k = HostTensor::from_fn([1, kv_heads, len, d], false, |_, _, s, c| {
        let x = noise(rng) + if c == 0 && s == spike { a } else { 0.0 };
        round_to(DType::F16, x)
    });
    let v = random_tensor(rng, [1, kv_heads, len, d], DType::F16, 1.0, None);
    [q, k, v]
}

/// Largest absolute LSE difference; equal values (both `-inf` included) count as 0.
pub fn lse_max_error(lse: &[f32], reference: &[f64]) -> f64 {
    lse.iter()
        .zip(reference)
        .map(|(&a, &b)| {
            if a as f64 == b {
                0.0
            } else {
                (a as f64 - b).abs()
            }
        })
        .fold(0.0, f64::max)
}

/// Runs `opts` on `[q, k, v]` (f16, HND, output and LSE poisoned) and asserts that the output is
/// within `max_rel_l1` (rel L1, no NaN where the emulation has none) and the LSE within `lse_tol`
/// (absolute) of the CPU emulation of the quantized algorithm (`f16_accum`: its f16 P·V
/// accumulator per key block); `what` names the case.
pub fn check_f16_against_emulation(
    [q, k, v]: [&HostTensor; 3],
    opts: &Options,
    f16_accum: bool,
    what: &str,
    (max_rel_l1, lse_tol): (f64, f64),
) {
    let (o, l) = run_poisoned(
        [q, k, v],
        DType::F16,
        Layout::Hnd,
        DType::F16,
        Layout::Hnd,
        opts,
    )
    .unwrap();
    let ref_opts = RefOptions {
        causal: opts.causal,
        sm_scale: None,
    };
    let reference = attention_quantized_emulation(q, k, v, &ref_opts, true, f16_accum);
    let m = compare(&o, &reference.o);
    let lse_diff = lse_max_error(&l, &reference.lse);
    eprintln!(
        "{what}: vs emulation rel L1 {:.2e}, LSE {lse_diff:.2e}",
        m.rel_l1
    );
    assert!(
        m.n_nan_mismatch == 0 && m.rel_l1 <= max_rel_l1,
        "{what}: {m:?}"
    );
    assert!(lse_diff <= lse_tol, "{what}: LSE {lse_diff:.2e}");
}

/// Q, K, V (f16, HND, one batch) whose scores rise steadily along the keys, the shape of `bench
/// --inputs recency`: channel 0 of Q about 8, channel 0 of key j 0.098·j (and 0.3·N(0,1) noise
/// everywhere), so ≈ 0.1 log2 units per key at d = 128 (0.14 at d = 64). Every unmasked tile
/// that the f16 kernels take against the lagging max passes it and is taken again.
pub fn steady_slope_inputs(
    rng: &mut StdRng,
    [q_heads, kv_heads, len, d]: [usize; 4],
) -> [HostTensor; 3] {
    let noise =
        |rng: &mut StdRng| -> f32 { 0.3 * Distribution::<f32>::sample(&StandardNormal, rng) };
    let q = HostTensor::from_fn([1, q_heads, len, d], false, |_, _, _, c| {
        round_to(DType::F16, noise(rng) + if c == 0 { 8.0 } else { 0.0 })
    });
    let k = HostTensor::from_fn([1, kv_heads, len, d], false, |_, _, s, c| {
        let slope = if c == 0 { 0.098 * s as f32 } else { 0.0 };
        round_to(DType::F16, noise(rng) + slope)
    });
    let v = random_tensor(rng, [1, kv_heads, len, d], DType::F16, 1.0, None);
    [q, k, v]
}
