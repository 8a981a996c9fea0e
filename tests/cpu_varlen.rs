//! CPU tests of variable-length (packed) batches: the varlen references equal the batched
//! references run on each sequence built on its own, equal lengths equal the batched call on the
//! same memory, every bad `cu_seqlens` gets its typed error from the host-side checks (no GPU
//! needed), and packed views narrow to the right sequences. Run in CI.

mod common;

use common::{pack, prefix_sums, random_tensor};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use sageattention::reference::{
    attention_f64, attention_quantized_emulation, attention_varlen_f64,
    attention_varlen_quantized_emulation, HostTensor, RefOptions, RefOutput,
};
use sageattention::varlen::{check_varlen_inputs, VarlenSequence, MAX_VARLEN_BATCH};
use sageattention::{DType, Error, Layout, Options, TensorView, TensorViewMut};

/// A packed batch: each sequence's own Q, K, V and the packed tensors with their prefix sums.
struct Batch {
    q_parts: Vec<HostTensor>,
    k_parts: Vec<HostTensor>,
    v_parts: Vec<HostTensor>,
    q: HostTensor,
    k: HostTensor,
    v: HostTensor,
    cu_q: Vec<i32>,
    cu_k: Vec<i32>,
}

fn batch(seed: u64, lens: &[(usize, usize)], heads: (usize, usize), row_pad: usize) -> Batch {
    let mut rng = StdRng::seed_from_u64(seed);
    let head_dim = 64;
    let (q_heads, kv_heads) = heads;
    let mut parts = |heads: usize, len_of: fn(&(usize, usize)) -> usize| -> Vec<HostTensor> {
        lens.iter()
            .map(|l| {
                random_tensor(
                    &mut rng,
                    [1, heads, len_of(l), head_dim],
                    DType::F16,
                    1.0,
                    None,
                )
            })
            .collect()
    };
    let q_parts = parts(q_heads, |l| l.0);
    let k_parts = parts(kv_heads, |l| l.1);
    let v_parts = parts(kv_heads, |l| l.1);
    Batch {
        q: pack(&q_parts, row_pad),
        k: pack(&k_parts, row_pad),
        v: pack(&v_parts, 0),
        cu_q: prefix_sums(lens.iter().map(|l| l.0)),
        cu_k: prefix_sums(lens.iter().map(|l| l.1)),
        q_parts,
        k_parts,
        v_parts,
    }
}

/// The packed output's rows of sequence `i` equal `part` (computed on that sequence alone),
/// bit for bit; rows of a sequence without keys are 0 with LSE -inf.
fn assert_sequence_rows(packed: &RefOutput, b: &Batch, i: usize, part: Option<&RefOutput>) {
    let start = b.cu_q[i] as usize;
    for h in 0..packed.q_heads {
        for r in 0..b.q_parts[i].seq() {
            let (o, lse) = (
                packed.o_row(0, h, start + r),
                packed.lse_at(0, h, start + r),
            );
            match part {
                Some(part) => {
                    assert_eq!(o, part.o_row(0, h, r), "sequence {i} head {h} row {r}");
                    assert_eq!(lse.to_bits(), part.lse_at(0, h, r).to_bits());
                }
                None => {
                    assert!(o.iter().all(|&x| x == 0.0), "sequence {i} without keys");
                    assert_eq!(lse, f64::NEG_INFINITY);
                }
            }
        }
    }
}

fn length() -> impl Strategy<Value = usize> {
    prop_oneof![Just(0usize), Just(1usize), 2usize..=300]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    /// Random mixes of lengths (empty, single rows, hundreds; Q and K lengths independent, so
    /// causal rows see a chunk against a longer or shorter context): the exact and the emulated
    /// varlen references equal the batched references on each sequence built on its own.
    #[test]
    fn varlen_references_equal_the_batched_ones_per_sequence(
        lens in prop::collection::vec((length(), length()), 1..=5),
        heads in prop::sample::select(vec![(1usize, 1usize), (2, 1), (4, 2)]),
        (causal, smooth_k, pv_f16_accum, row_pad) in (any::<bool>(), any::<bool>(), any::<bool>(), prop::sample::select(vec![0usize, 8])),
        sm_scale in prop::option::of(0.05f32..0.3),
        seed in any::<u64>(),
    ) {
        let b = batch(seed, &lens, heads, row_pad);
        let opts = RefOptions { causal, sm_scale };
        let cu = (b.cu_q.as_slice(), b.cu_k.as_slice());
        let exact = attention_varlen_f64(&b.q, &b.k, &b.v, cu, &opts);
        let emulated =
            attention_varlen_quantized_emulation(&b.q, &b.k, &b.v, cu, &opts, smooth_k, pv_f16_accum);
        prop_assert_eq!((exact.batch, exact.q_heads, exact.qo_len), (1, heads.0, b.q.seq()));
        for i in 0..lens.len() {
            let has_keys = b.k_parts[i].seq() > 0 && b.q_parts[i].seq() > 0;
            let (q, k, v) = (&b.q_parts[i], &b.k_parts[i], &b.v_parts[i]);
            let part = has_keys.then(|| attention_f64(q, k, v, &opts));
            assert_sequence_rows(&exact, &b, i, part.as_ref());
            let part = has_keys
                .then(|| attention_quantized_emulation(q, k, v, &opts, smooth_k, pv_f16_accum));
            assert_sequence_rows(&emulated, &b, i, part.as_ref());
        }
    }
}

/// Equal lengths: a batched NHD tensor `[b, h, n, d]` is, in memory, the packed
/// `[b·n, h, d]`; the varlen reference on it equals the batched reference row by row.
#[test]
fn equal_lengths_equal_the_batched_reference_on_the_same_memory() {
    let (batch_size, heads, n, d) = (3, 2, 77, 64);
    let mut rng = StdRng::seed_from_u64(7);
    let mut tensor = |seq| {
        HostTensor::from_fn([batch_size, heads, seq, d], true, |_, _, _, _| {
            StandardNormal.sample(&mut rng)
        })
    };
    let (q, k, v) = (tensor(n), tensor(n + 20), tensor(n + 20));
    let packed = |t: &HostTensor| {
        let [b, h, s, d] = t.shape;
        HostTensor::from_parts(t.data.clone(), [1, h, b * s, d], [0, d, h * d, 1])
    };
    let cu_q = prefix_sums([n; 3]);
    let cu_k = prefix_sums([n + 20; 3]);
    for causal in [false, true] {
        let opts = RefOptions {
            causal,
            sm_scale: None,
        };
        let batched = attention_f64(&q, &k, &v, &opts);
        let varlen =
            attention_varlen_f64(&packed(&q), &packed(&k), &packed(&v), (&cu_q, &cu_k), &opts);
        for b in 0..batch_size {
            for h in 0..heads {
                for i in 0..n {
                    assert_eq!(varlen.o_row(0, h, b * n + i), batched.o_row(b, h, i));
                    assert_eq!(varlen.lse_at(0, h, b * n + i), batched.lse_at(b, h, i));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Validation on the host (raw views at fake addresses: the checks never touch the memory)
// ---------------------------------------------------------------------------------------------

/// A packed NHD view `[1, heads, total, head_dim]` at a fake, aligned address.
fn packed_view(
    dtype: DType,
    heads: usize,
    total: usize,
    head_dim: usize,
    base: u64,
) -> TensorView<'static> {
    let row = (heads * head_dim) as i64;
    // SAFETY: only the pure checks see this view; they read its geometry, never its memory.
    unsafe {
        TensorView::from_raw(
            base,
            dtype,
            [1, heads, total, head_dim],
            [row * total as i64, head_dim as i64, row, 1],
            0,
        )
    }
}

/// Checks host prefix sums against packed f16 views of `total_q` / `total_k` rows (4 query
/// heads, 2 kv heads, head_dim 64).
fn check(
    cu_q: &[i32],
    cu_k: &[i32],
    totals: (usize, usize),
    max: (usize, usize),
) -> Result<Vec<VarlenSequence>, Error> {
    let q = packed_view(DType::F16, 4, totals.0, 64, 1 << 20);
    let k = packed_view(DType::F16, 2, totals.1, 64, 1 << 32);
    let v = packed_view(DType::F16, 2, totals.1, 64, 1 << 40);
    check_varlen_inputs(&q, &k, &v, cu_q, cu_k, max.0, max.1, &Options::default())
        .map(|b| b.sequences().to_vec())
}

#[test]
fn accepts_empty_sequences_and_returns_the_row_ranges() {
    let seqs = check(&[0, 3, 3, 10], &[0, 0, 5, 12], (10, 12), (7, 7)).unwrap();
    let expected =
        [(0..3, 0..0), (3..3, 0..5), (3..10, 5..12)].map(|(q, k)| VarlenSequence { q, k });
    assert_eq!(seqs, expected);
}

#[test]
fn every_bad_cu_seqlens_gets_its_error() {
    let ok_k: &[i32] = &[0, 4, 8];
    let err = |cu_q: &[i32], cu_k: &[i32], max: (usize, usize)| {
        check(cu_q, cu_k, (8, 8), max).unwrap_err()
    };
    let big = (100, 100);

    let e = err(&[], ok_k, big);
    assert!(
        matches!(
            e,
            Error::SeqlensBatch {
                tensor: "cu_seqlens_q",
                len: 0,
                batch: 0,
                ..
            }
        ),
        "{e}"
    );
    let e = err(&[0, 4, 8], &[0], big);
    assert!(
        matches!(
            e,
            Error::SeqlensBatch {
                tensor: "cu_seqlens_k",
                len: 1,
                batch: 0,
                ..
            }
        ),
        "{e}"
    );
    let too_many = vec![0i32; MAX_VARLEN_BATCH + 2];
    let e = check(&too_many, &too_many, (8, 8), big).unwrap_err();
    assert!(
        matches!(e, Error::SeqlensBatch { batch, .. } if batch == MAX_VARLEN_BATCH + 1),
        "{e}"
    );

    let e = err(&[0, 8], ok_k, big);
    assert!(
        matches!(
            e,
            Error::SeqlensBatchMismatch {
                q_batch: 1,
                k_batch: 2
            }
        ),
        "{e}"
    );

    let e = err(&[1, 4, 8], ok_k, big);
    assert!(
        matches!(
            e,
            Error::SeqlensFirst {
                tensor: "cu_seqlens_q",
                first: 1
            }
        ),
        "{e}"
    );
    let e = err(&[0, 4, 8], &[-2, 4, 8], big);
    assert!(
        matches!(
            e,
            Error::SeqlensFirst {
                tensor: "cu_seqlens_k",
                first: -2
            }
        ),
        "{e}"
    );

    let e = err(&[0, 5, 4, 8], &[0, 1, 2, 8], big);
    assert!(
        matches!(
            e,
            Error::SeqlensNotMonotone {
                tensor: "cu_seqlens_q",
                index: 2,
                prev: 5,
                next: 4
            }
        ),
        "{e}"
    );
    let e = err(&[0, 4, 8], &[0, 9, 8], big);
    assert!(
        matches!(
            e,
            Error::SeqlensNotMonotone {
                tensor: "cu_seqlens_k",
                index: 2,
                ..
            }
        ),
        "{e}"
    );

    let e = err(&[0, 4, 7], ok_k, big);
    assert!(
        matches!(
            e,
            Error::SeqlensTotal {
                tensor: "cu_seqlens_q",
                packed: "q",
                last: 7,
                total: 8
            }
        ),
        "{e}"
    );
    let e = err(&[0, 4, 8], &[0, 4, 9], big);
    assert!(
        matches!(
            e,
            Error::SeqlensTotal {
                tensor: "cu_seqlens_k",
                packed: "k",
                last: 9,
                total: 8
            }
        ),
        "{e}"
    );

    let e = err(&[0, 2, 8], ok_k, (5, 100));
    assert!(
        matches!(
            e,
            Error::SeqlenAboveMax {
                tensor: "cu_seqlens_q",
                index: 1,
                len: 6,
                max: 5
            }
        ),
        "{e}"
    );
    let e = err(&[0, 4, 8], ok_k, (100, 3));
    assert!(
        matches!(
            e,
            Error::SeqlenAboveMax {
                tensor: "cu_seqlens_k",
                index: 0,
                len: 4,
                max: 3
            }
        ),
        "{e}"
    );
    // The messages name the values.
    let text = err(&[0, 5, 4, 8], &[0, 1, 2, 8], big).to_string();
    assert!(
        text.contains("cu_seqlens_q") && text.contains('5') && text.contains('4'),
        "{text}"
    );
}

#[test]
fn bad_packed_tensors_get_the_batched_calls_errors() {
    let cu: &[i32] = &[0, 8];
    let opts = Options::default();
    let k = packed_view(DType::F16, 2, 8, 64, 1 << 32);
    // Batch ≠ 1: not a packed view.
    // SAFETY: a fake address, only the pure checks see it.
    let q =
        unsafe { TensorView::from_raw(1 << 20, DType::F16, [2, 4, 4, 64], [1024, 64, 256, 1], 0) };
    let e = check_varlen_inputs(&q, &k, &k, cu, cu, 8, 8, &opts).unwrap_err();
    assert!(
        matches!(
            e,
            Error::NotPacked {
                tensor: "q",
                shape: [2, 4, 4, 64]
            }
        ),
        "{e}"
    );
    // head_dim, dtype, heads, stride: the batched call's checks on the packed views.
    let q = packed_view(DType::F16, 4, 8, 264, 1 << 20);
    let k264 = packed_view(DType::F16, 2, 8, 264, 1 << 32);
    let e = check_varlen_inputs(&q, &k264, &k264, cu, cu, 8, 8, &opts).unwrap_err();
    assert!(
        matches!(e, Error::UnsupportedHeadDim { head_dim: 264, .. }),
        "{e}"
    );
    let q = packed_view(DType::BF16, 4, 8, 64, 1 << 20);
    let e = check_varlen_inputs(&q, &k, &k, cu, cu, 8, 8, &opts).unwrap_err();
    assert!(matches!(e, Error::DTypeMismatch { tensor: "k", .. }), "{e}");
    let q = packed_view(DType::F16, 3, 8, 64, 1 << 20);
    let e = check_varlen_inputs(&q, &k, &k, cu, cu, 8, 8, &opts).unwrap_err();
    assert!(
        matches!(
            e,
            Error::HeadsNotDivisible {
                q_heads: 3,
                kv_heads: 2
            }
        ),
        "{e}"
    );
    // SAFETY: as above.
    let q = unsafe { TensorView::from_raw(1 << 20, DType::F16, [1, 4, 8, 64], [0, 64, 260, 1], 0) };
    let e = check_varlen_inputs(&q, &k, &k, cu, cu, 8, 8, &opts).unwrap_err();
    assert!(matches!(e, Error::InvalidStride { tensor: "q", .. }), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    /// Any lengths (zeros included) are accepted with their ranges; breaking one entry gives the
    /// error of the rule it breaks.
    #[test]
    fn prefix_sums_of_any_lengths_pass_and_broken_ones_fail(
        lens in prop::collection::vec((0usize..50, 0usize..50), 1..=8),
        which in 0usize..8,
        delta in 1i32..5,
    ) {
        let cu_q = prefix_sums(lens.iter().map(|l| l.0));
        let cu_k = prefix_sums(lens.iter().map(|l| l.1));
        let totals = (*cu_q.last().unwrap() as usize, *cu_k.last().unwrap() as usize);
        let max = (
            lens.iter().map(|l| l.0).max().unwrap(),
            lens.iter().map(|l| l.1).max().unwrap(),
        );
        // The views need at least one row; an all-empty side is covered by the fixed tests.
        prop_assume!(totals.0 > 0 && totals.1 > 0);
        let seqs = check(&cu_q, &cu_k, totals, max).unwrap();
        prop_assert_eq!(seqs.len(), lens.len());
        for (s, &(lq, lk)) in seqs.iter().zip(&lens) {
            prop_assert_eq!((s.q.len(), s.k.len()), (lq, lk));
        }
        // One longer than the longest sequence allows.
        if max.0 > 0 {
            let e = check(&cu_q, &cu_k, totals, (max.0 - 1, max.1)).unwrap_err();
            prop_assert!(matches!(e, Error::SeqlenAboveMax { tensor: "cu_seqlens_q", .. }), "{}", e);
        }
        // A raised last entry no longer matches the packed rows.
        let mut bad = cu_q.clone();
        *bad.last_mut().unwrap() += delta;
        let e = check(&bad, &cu_k, totals, (usize::MAX, usize::MAX)).unwrap_err();
        prop_assert!(matches!(e, Error::SeqlensTotal { tensor: "cu_seqlens_q", .. }), "{}", e);
        // An inner entry raised above its successor breaks monotonicity.
        let i = 1 + which % lens.len();
        if i < lens.len() {
            let mut bad = cu_k.clone();
            bad[i] = bad[i + 1] + delta;
            let e = check(&cu_q, &bad, totals, (usize::MAX, usize::MAX)).unwrap_err();
            let is_not_monotone = matches!(e, Error::SeqlensNotMonotone { tensor: "cu_seqlens_k", index, .. } if index == i + 1);
            prop_assert!(is_not_monotone, "{}", e);
        }
    }
}

/// A sequence of a packed view is `narrow(2, start, len)`: the pointer moves by `start` rows,
/// the strides stay; out-of-range narrowing is an error.
#[test]
fn packed_views_narrow_to_their_sequences() {
    let packed = packed_view(DType::F16, 4, 100, 64, 1 << 20);
    let seq = packed.narrow(2, 30, 20).unwrap();
    assert_eq!(seq.shape(), [1, 4, 20, 64]);
    assert_eq!(seq.strides(), packed.strides());
    let offset = 30 * 4 * 64 * 2;
    assert!(
        format!("{seq:?}").contains(&format!("{:#x}", (1u64 << 20) + offset)),
        "{seq:?}"
    );
    seq.validate("q").unwrap();
    // Narrowing a narrowed view adds the offsets.
    let row = seq.narrow(2, 5, 1).unwrap();
    assert!(
        format!("{row:?}").contains(&format!("{:#x}", (1u64 << 20) + offset + 5 * 512)),
        "{row:?}"
    );
    assert!(matches!(
        packed.narrow(2, 90, 11),
        Err(Error::OutOfBounds { .. })
    ));
    assert!(matches!(
        packed.narrow(4, 0, 1),
        Err(Error::OutOfBounds { .. })
    ));
    // An empty sequence is an empty view, which validation refuses.
    let empty = packed.narrow(2, 100, 0).unwrap();
    assert!(matches!(
        empty.validate("q"),
        Err(Error::EmptyTensor { .. })
    ));
}

/// `n` equal-length sequences of a packed view, `narrow(2, start, n·len).split_seq(len)`, are
/// the batched view `[n, heads, len, d]`: for a contiguous packed tensor exactly the NHD
/// strides of that batch, the pointer at the first sequence; the writable form passes the
/// output's no-overlap check; misuse gets typed errors.
#[test]
fn equal_length_sequences_split_into_a_batch() {
    let packed = packed_view(DType::F16, 4, 100, 64, 1 << 20);
    let run = packed.narrow(2, 20, 60).unwrap().split_seq(20).unwrap();
    assert_eq!(run.shape(), [3, 4, 20, 64]);
    assert_eq!(
        run.strides(),
        Layout::Nhd.contiguous_strides([3, 4, 20, 64])
    );
    assert!(
        format!("{run:?}").contains(&format!("{:#x}", (1u64 << 20) + 20 * 256 * 2)),
        "{run:?}"
    );
    run.validate("q").unwrap();
    // A whole packed tensor of one sequence is batch 1; other strides (heads outermost) keep
    // theirs, the batch stride is `len` rows.
    assert_eq!(packed.split_seq(100).unwrap().shape(), [1, 4, 100, 64]);
    // SAFETY: only the pure checks see these views; they read their geometry, never memory.
    let hnd = unsafe {
        TensorView::from_raw(
            1 << 20,
            DType::BF16,
            [1, 2, 96, 128],
            [2 * 96 * 128, 96 * 128, 128, 1],
            0,
        )
    };
    let split = hnd.split_seq(32).unwrap();
    assert_eq!(split.shape(), [3, 2, 32, 128]);
    assert_eq!(split.strides(), [32 * 128, 96 * 128, 128, 1]);
    split.validate("k").unwrap();
    // SAFETY: as above.
    let mut out = unsafe {
        TensorViewMut::from_raw(
            1 << 32,
            DType::F16,
            [1, 4, 100, 64],
            [100 * 256, 64, 256, 1],
            0,
        )
    };
    let mut rows = out.narrow_mut(2, 40, 50).unwrap();
    let batch = rows.split_seq_mut(10).unwrap();
    assert_eq!(
        (batch.shape(), batch.strides()),
        ([5, 4, 10, 64], [10 * 256, 64, 256, 1])
    );
    batch.validate("out").unwrap();
    for (view, len) in [(&packed, 0), (&packed, 30), (&run, 10)] {
        assert!(
            matches!(view.split_seq(len), Err(Error::ShapeMismatch { .. })),
            "{view:?} split by {len}"
        );
    }
}
