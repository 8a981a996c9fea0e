//! The launch-layer half of the varlen call (`crate::varlen`): the checks of packed inputs
//! ([`check_varlen`], pure, testable without a GPU), the grouping of the sequences into batched
//! problems ([`equal_length_runs`], pure), and the two device operations the varlen call needs
//! besides the batched call: placing a run's LSE into the packed LSE ([`copy_lse_run`]) and
//! writing the rows of a sequence that has no keys ([`fill_rows_without_keys`]).

use std::ops::Range;

use cudarc::driver::{sys, CudaSlice, DevicePtr, DevicePtrMut};

use super::dispatch::select;
use super::validate::{check_on_device, check_problem, Problem};
use crate::device::runtime::Runtime;
use crate::device::tensor::{TensorView, TensorViewMut};
use crate::types::error::{CudaResultExt, Error, Result};
use crate::types::options::Options;
use crate::types::varlen::{VarlenBatch, MAX_VARLEN_BATCH};

/// The checked geometry of one varlen call: the packed problem (batch 1, `qo_len = total_q`,
/// `kv_len = total_k`) and its sequences.
#[derive(Clone, Debug)]
pub(crate) struct VarlenProblem {
    pub(crate) packed: Problem,
    pub(crate) batch: VarlenBatch,
}

/// The prefix sums and maximum lengths of a varlen call, as the caller gave them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Seqlens<'a> {
    pub(crate) cu_q: &'a [i32],
    pub(crate) cu_k: &'a [i32],
    pub(crate) max_q: usize,
    pub(crate) max_k: usize,
}

/// Everything about packed inputs that needs no driver call, in this order: each of q, k, v is a
/// packed view (batch 1, [`Error::NotPacked`]); the batched call's checks of the packed views
/// (dtype, head_dim, strides, alignment, GQA, sizes, options); the prefix sums against the packed
/// row counts and the maximum lengths ([`VarlenBatch::new`]).
pub(crate) fn check_varlen(
    q: &TensorView,
    k: &TensorView,
    v: &TensorView,
    seqlens: Seqlens,
    opts: &Options,
) -> Result<VarlenProblem> {
    for (name, t) in [("q", q), ("k", k), ("v", v)] {
        if t.batch() != 1 {
            return Err(Error::NotPacked {
                tensor: name,
                shape: t.shape(),
            });
        }
    }
    let packed = check_problem(q, k, v, opts)?;
    let batch = VarlenBatch::new(
        seqlens.cu_q,
        seqlens.cu_k,
        (packed.qo_len, packed.kv_len),
        (seqlens.max_q, seqlens.max_k),
    )?;
    Ok(VarlenProblem { packed, batch })
}

/// [`check_varlen`], then the driver-level checks of the batched call (compute capability, the
/// inputs are memory of the runtime's device) and its kernel choice, which depends on the device,
/// head_dim and options only (so an unavailable P·V precision is refused before any sequence
/// runs).
pub(crate) fn validate_varlen(
    rt: &Runtime,
    q: &TensorView,
    k: &TensorView,
    v: &TensorView,
    seqlens: Seqlens,
    opts: &Options,
) -> Result<VarlenProblem> {
    let problem = check_varlen(q, k, v, seqlens, opts)?;
    check_on_device(rt, q, k, v)?;
    select(rt, &problem.packed, opts)?;
    Ok(problem)
}

/// Most `batch × q_heads × max(q_len, k_len)` of one run ([`equal_length_runs`]). Every CTA
/// count of the batched call's preparation is at most that product per job, so with at most four
/// jobs per launch it stays far below the `i32::MAX` grid limit the batched call enforces; the
/// cap also bounds the scratch memory (and the LSE staging) of one call to about what 2^24
/// query rows of one head need, where splitting a longer run costs nothing measurable (each
/// part is still thousands of CTAs).
pub(crate) const MAX_RUN_HEAD_ROWS: usize = 1 << 24;

/// Consecutive sequences of a packed batch with the same query and key lengths, both non-zero,
/// whose rows follow each other in the packed tensors: together they are the batched problem
/// `[count, heads, q_len, head_dim]` / `[count, kv_heads, k_len, head_dim]` (views made with
/// `narrow(2, ..)` then `split_seq`), which computes per batch entry exactly what it computes
/// per sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Run {
    /// First row of the run in the packed Q (and output and LSE).
    pub(crate) q_start: usize,
    /// First row of the run in the packed K and V.
    pub(crate) k_start: usize,
    /// Query rows of each sequence.
    pub(crate) q_len: usize,
    /// Key rows of each sequence.
    pub(crate) k_len: usize,
    /// Sequences: the batched call's batch.
    pub(crate) count: usize,
}

impl Run {
    /// The run's rows of the packed Q.
    pub(crate) fn q_rows(&self) -> Range<usize> {
        self.q_start..self.q_start + self.count * self.q_len
    }

    /// The run's rows of the packed K and V.
    pub(crate) fn k_rows(&self) -> Range<usize> {
        self.k_start..self.k_start + self.count * self.k_len
    }
}

/// The batched problems of a packed batch with `q_heads` query heads: maximal runs of sequences
/// with equal, non-zero lengths and contiguous rows, in order, each capped at
/// [`MAX_RUN_HEAD_ROWS`] (and [`MAX_VARLEN_BATCH`] sequences). A sequence without queries or
/// without keys belongs to no run (it needs no attention launch); one without either has no rows,
/// so the runs on its two sides may join. Sequences of different lengths are runs of one.
pub(crate) fn equal_length_runs(batch: &VarlenBatch, q_heads: usize) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for seq in batch.sequences() {
        let (q_len, k_len) = (seq.q.len(), seq.k.len());
        if q_len == 0 || k_len == 0 {
            continue;
        }
        let most = (MAX_RUN_HEAD_ROWS / q_heads.max(1).saturating_mul(q_len.max(k_len)))
            .clamp(1, MAX_VARLEN_BATCH);
        match runs.last_mut() {
            Some(run)
                if (run.q_len, run.k_len) == (q_len, k_len)
                    && run.q_rows().end == seq.q.start
                    && run.k_rows().end == seq.k.start
                    && run.count < most =>
            {
                run.count += 1;
            }
            _ => runs.push(Run {
                q_start: seq.q.start,
                k_start: seq.k.start,
                q_len,
                k_len,
                count: 1,
            }),
        }
    }
    runs
}

/// Copies a run's LSE, `[run.count][heads][run.q_len]` contiguous at the start of `src` (what
/// the batched call writes), into the packed LSE `dst`, `[heads][total]`, at columns
/// `run.q_rows()`, on the runtime's stream: one 2-d copy per sequence (`heads` rows of `q_len`
/// floats) or one per head (`count` rows of `q_len` floats, contiguous in `dst`), whichever
/// takes fewer.
pub(crate) fn copy_lse_run(
    rt: &Runtime,
    src: &CudaSlice<f32>,
    dst: &mut CudaSlice<f32>,
    heads: usize,
    run: &Run,
    total: usize,
) -> Result<()> {
    let (len, count) = (run.q_len, run.count);
    debug_assert!(src.len() >= count * heads * len && dst.len() >= heads * total);
    debug_assert!(run.q_rows().end <= total);
    rt.bind()?;
    let stream = rt.stream();
    let (src_ptr, _src_guard) = src.device_ptr(stream);
    let (dst_ptr, _dst_guard) = dst.device_ptr_mut(stream);
    let copy = |c: Copy2d| {
        c.enqueue(rt, src_ptr, dst_ptr).with_op(|| {
            format!(
                "copying the LSE of rows {:?} ({count} sequences, {heads} heads) into the packed \
                 LSE of {total} rows",
                run.q_rows()
            )
        })
    };
    if count <= heads {
        for b in 0..count {
            copy(Copy2d {
                src: (b * heads * len, len),
                dst: (run.q_start + b * len, total),
                width: len,
                height: heads,
            })?;
        }
    } else {
        for h in 0..heads {
            copy(Copy2d {
                src: (h * len, heads * len),
                dst: (h * total + run.q_start, len),
                width: len,
                height: count,
            })?;
        }
    }
    Ok(())
}

/// One 2-d copy of f32 between two device buffers: `height` rows of `width` floats; each side is
/// (offset of its first float, row pitch), in floats. The offsets move the base pointers rather
/// than going into `XInBytes`, so no row offset ever exceeds its pitch.
#[derive(Clone, Copy, Debug)]
struct Copy2d {
    src: (usize, usize),
    dst: (usize, usize),
    width: usize,
    height: usize,
}

impl Copy2d {
    fn enqueue(
        self,
        rt: &Runtime,
        src_ptr: u64,
        dst_ptr: u64,
    ) -> std::result::Result<(), cudarc::driver::DriverError> {
        const F32: usize = std::mem::size_of::<f32>();
        let copy = sys::CUDA_MEMCPY2D {
            srcXInBytes: 0,
            srcY: 0,
            srcMemoryType: sys::CUmemorytype::CU_MEMORYTYPE_DEVICE,
            srcHost: std::ptr::null(),
            srcDevice: src_ptr + (self.src.0 * F32) as u64,
            srcArray: std::ptr::null_mut(),
            srcPitch: self.src.1 * F32,
            dstXInBytes: 0,
            dstY: 0,
            dstMemoryType: sys::CUmemorytype::CU_MEMORYTYPE_DEVICE,
            dstHost: std::ptr::null_mut(),
            dstDevice: dst_ptr + (self.dst.0 * F32) as u64,
            dstArray: std::ptr::null_mut(),
            dstPitch: self.dst.1 * F32,
            WidthInBytes: self.width * F32,
            Height: self.height,
        };
        // SAFETY: the callers' geometry keeps both sides inside their buffers (rows of `width`
        // floats from the first float, `pitch` apart, `height` rows), which are device memory of
        // the runtime's context, bound by the caller, whose access guards order the copy with
        // other users of the two buffers.
        unsafe { sys::cuMemcpy2DAsync_v2(&copy, rt.stream().cu_stream()) }.result()
    }
}

/// Writes what the batched call writes for query rows that see no key, for a sequence whose K is
/// empty (which the batched call, refusing empty tensors, cannot be asked for): zeros into
/// `out` (that sequence's rows of the packed output, `[1, heads, len, head_dim]`) and `-inf` into
/// the packed LSE `[heads][total]` at columns `rows` when given. 2-d memsets on the runtime's
/// stream, one per head for the output.
pub(crate) fn fill_rows_without_keys(
    rt: &Runtime,
    out: &mut TensorViewMut,
    lse: Option<&mut CudaSlice<f32>>,
    rows: Range<usize>,
    total: usize,
) -> Result<()> {
    const F32: usize = std::mem::size_of::<f32>();
    rt.bind()?;
    let stream = rt.stream();
    let [_, heads, len, head_dim] = out.shape();
    let [_, head_stride, row_stride, _] = out.strides();
    let elem = out.dtype().size_bytes();
    // Strides are non-negative (validated); a pitch only matters with more than one row.
    let pitch = if len > 1 {
        row_stride as usize * elem
    } else {
        head_dim * elem
    };
    let (out_ptr, _out_guard) = out.device_ptr_mut(stream);
    for h in 0..heads {
        let ptr = out_ptr + (h * head_stride as usize * elem) as u64;
        // SAFETY: rows `0..len` of head `h` of the validated output view, `head_dim` 2-byte
        // elements each, `pitch` bytes apart; all-zero bits are +0.0 in f16 and bf16.
        unsafe { sys::cuMemsetD2D16Async(ptr, pitch, 0, head_dim, len, stream.cu_stream()) }
            .result()
            .with_op(|| {
                format!("zeroing {len} output rows of head {h} (a sequence without keys)")
            })?;
    }
    if let Some(lse) = lse {
        let (lse_ptr, _lse_guard) = lse.device_ptr_mut(stream);
        let ptr = lse_ptr + (rows.start * F32) as u64;
        // SAFETY: `heads` rows of the packed LSE, `total` floats apart, columns `rows` (inside
        // the buffer, validated to hold `heads * total` floats).
        unsafe {
            sys::cuMemsetD2D32Async(
                ptr,
                total * F32,
                f32::NEG_INFINITY.to_bits(),
                rows.len(),
                heads,
                stream.cu_stream(),
            )
        }
        .result()
        .with_op(|| format!("writing -inf into the LSE of rows {rows:?}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The checked batch of `(q_len, k_len)` sequences, packed one after the other.
    fn batch(lens: &[(usize, usize)]) -> VarlenBatch {
        let sums = |f: fn(&(usize, usize)) -> usize| {
            std::iter::once(0)
                .chain(lens.iter().scan(0, |acc, l| {
                    *acc += f(l);
                    Some(*acc as i32)
                }))
                .collect::<Vec<i32>>()
        };
        let (cu_q, cu_k) = (sums(|l| l.0), sums(|l| l.1));
        let total = |cu: &[i32]| *cu.last().unwrap() as usize;
        VarlenBatch::new(
            &cu_q,
            &cu_k,
            (total(&cu_q), total(&cu_k)),
            (usize::MAX, usize::MAX),
        )
        .unwrap()
    }

    fn run(q_start: usize, k_start: usize, (q_len, k_len): (usize, usize), count: usize) -> Run {
        Run {
            q_start,
            k_start,
            q_len,
            k_len,
            count,
        }
    }

    #[test]
    fn equal_lengths_are_one_run() {
        let runs = equal_length_runs(&batch(&[(1000, 1000); 4]), 32);
        assert_eq!(runs, [run(0, 0, (1000, 1000), 4)]);
        assert_eq!((runs[0].q_rows(), runs[0].k_rows()), (0..4000, 0..4000));
        // Chunked prefill: queries shorter than keys, still one run.
        let runs = equal_length_runs(&batch(&[(200, 333); 3]), 4);
        assert_eq!(runs, [run(0, 0, (200, 333), 3)]);
        assert_eq!((runs[0].q_rows(), runs[0].k_rows()), (0..600, 0..999));
    }

    #[test]
    fn different_lengths_are_runs_of_one() {
        let runs = equal_length_runs(&batch(&[(1, 2), (3, 4), (5, 6)]), 8);
        assert_eq!(
            runs,
            [
                run(0, 0, (1, 2), 1),
                run(1, 2, (3, 4), 1),
                run(4, 6, (5, 6), 1)
            ]
        );
        assert_eq!(
            equal_length_runs(&batch(&[(7, 9)]), 1),
            [run(0, 0, (7, 9), 1)]
        );
    }

    #[test]
    fn alternating_lengths_never_merge() {
        let runs = equal_length_runs(&batch(&[(10, 20), (30, 40), (10, 20), (30, 40)]), 2);
        assert_eq!(
            runs,
            [
                run(0, 0, (10, 20), 1),
                run(10, 20, (30, 40), 1),
                run(40, 60, (10, 20), 1),
                run(50, 80, (30, 40), 1)
            ]
        );
        // Equal query lengths with different key lengths (and the reverse) are different
        // problems.
        let runs = equal_length_runs(&batch(&[(10, 20), (10, 21), (11, 21)]), 2);
        assert_eq!(runs.iter().map(|r| r.count).collect::<Vec<_>>(), [1, 1, 1]);
    }

    /// Sequences without queries or keys are in no run; one without either has no rows, so
    /// the runs on both sides join; one with rows on one side only breaks the contiguity.
    #[test]
    fn empty_sequences_split_runs_only_where_rows_do() {
        let lens = [
            (0, 0),
            (10, 20),
            (10, 20),
            (0, 0),
            (10, 20),
            (5, 0),
            (10, 20),
            (10, 20),
            (0, 7),
            (10, 20),
        ];
        let runs = equal_length_runs(&batch(&lens), 4);
        assert_eq!(
            runs,
            [
                run(0, 0, (10, 20), 3),
                run(35, 60, (10, 20), 2),
                run(55, 107, (10, 20), 1)
            ]
        );
        assert!(equal_length_runs(&batch(&[(0, 0), (3, 0), (0, 4)]), 1).is_empty());
    }

    #[test]
    fn long_runs_split_at_the_budget() {
        // 2^12 heads × 2^11 rows: two sequences per call.
        let runs = equal_length_runs(&batch(&[(1 << 11, 1 << 10); 5]), 1 << 12);
        let len = (1 << 11, 1 << 10);
        assert_eq!(
            runs,
            [
                run(0, 0, len, 2),
                run(2 << 11, 2 << 10, len, 2),
                run(4 << 11, 4 << 10, len, 1)
            ]
        );
        // The longer of the two lengths counts; past the budget a sequence is a run of one.
        let runs = equal_length_runs(&batch(&[(1, 1 << 13); 3]), 1 << 12);
        assert_eq!(runs.iter().map(|r| r.count).collect::<Vec<_>>(), [1, 1, 1]);
        let runs = equal_length_runs(&batch(&[(1, 1 << 12); 3]), 1 << 12);
        assert_eq!(runs.iter().map(|r| r.count).collect::<Vec<_>>(), [1, 1, 1]);
        let runs = equal_length_runs(&batch(&[(1, 1 << 11); 3]), 1 << 12);
        assert_eq!(runs.iter().map(|r| r.count).collect::<Vec<_>>(), [2, 1]);
    }

    fn length() -> impl Strategy<Value = usize> {
        prop_oneof![2 => Just(0usize), 3 => Just(4usize), 3 => Just(6usize), 1 => 1usize..=9]
    }

    proptest! {
        /// The runs cover exactly the sequences with queries and keys, in order; each is a
        /// batched problem (equal lengths, contiguous rows); neighbours that could join did.
        #[test]
        fn runs_cover_the_sequences_with_queries_and_keys(
            lens in prop::collection::vec((length(), length()), 1..40),
            heads in prop_oneof![Just(1usize), Just(1 << 22)],
        ) {
            let b = batch(&lens);
            let runs = equal_length_runs(&b, heads);
            let expected: Vec<_> = b
                .sequences()
                .iter()
                .filter(|s| !s.q.is_empty() && !s.k.is_empty())
                .collect();
            let mut covered = Vec::new();
            for r in &runs {
                prop_assert!(r.count >= 1 && r.q_len > 0 && r.k_len > 0);
                prop_assert!(heads * r.q_len.max(r.k_len) * r.count <= MAX_RUN_HEAD_ROWS || r.count == 1);
                for i in 0..r.count {
                    covered.push((
                        r.q_start + i * r.q_len..r.q_start + (i + 1) * r.q_len,
                        r.k_start + i * r.k_len..r.k_start + (i + 1) * r.k_len,
                    ));
                }
            }
            let want: Vec<_> = expected.iter().map(|s| (s.q.clone(), s.k.clone())).collect();
            prop_assert_eq!(covered, want);
            for w in runs.windows(2) {
                let joinable = (w[0].q_len, w[0].k_len) == (w[1].q_len, w[1].k_len)
                    && w[0].q_rows().end == w[1].q_start
                    && w[0].k_rows().end == w[1].k_start;
                let full = heads * w[0].q_len.max(w[0].k_len) * (w[0].count + 1) > MAX_RUN_HEAD_ROWS;
                prop_assert!(!joinable || full, "{:?} could join", w);
            }
        }
    }
}
