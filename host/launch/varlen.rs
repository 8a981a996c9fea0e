//! The launch-layer half of the varlen call (`crate::varlen`): the checks of packed inputs
//! ([`check_varlen`], pure, testable without a GPU), the grouping of the sequences into batched
//! problems ([`equal_length_runs`], pure), their spreading over streams ([`schedule_runs`],
//! pure), and the two device operations the varlen call needs besides the batched call: placing
//! a run's LSE into the packed LSE ([`copy_lse_run`]) and writing the rows of a sequence that has
//! no keys ([`fill_rows_without_keys`]).

use std::ops::Range;

use cudarc::driver::{sys, CudaSlice, DevicePtr};

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

/// Query–key pairs a causal (bottom-right) sequence of `q` queries and `k` keys attends, or all
/// `q·k` without the mask: the `min(q, k)` last query rows see `k - min(q, k) + 1 ..= k` keys.
fn visible_pairs(q: u128, k: u128, causal: bool) -> u128 {
    if !causal {
        return q * k;
    }
    let m = q.min(k);
    m * k - m * (m - 1) / 2
}

/// Weight of a Q or K row's preparation (reading it, quantizing it, writing it back: memory
/// bound) in query–key pairs of attention (tensor bound). An estimate from the H200's peak rates,
/// not a measurement: a 128-wide f16 row moves about 500 bytes, as long at 4.8 TB/s as 100–200
/// pairs of 512 INT8/f16 operations at 500–600 TOPS. It only matters for short sequences, whose
/// attention is small next to their preparation.
const PREP_PAIRS_PER_ROW: u128 = 128;

/// Estimated GPU work of a run (arbitrary units, for comparing the runs of one call: the head
/// count and head_dim are common to all of them).
pub(crate) fn run_cost(run: &Run, causal: bool) -> u128 {
    let (q, k) = (run.q_len as u128, run.k_len as u128);
    run.count as u128 * (visible_pairs(q, k, causal) + PREP_PAIRS_PER_ROW * (q + k))
}

/// Which stream each run of a varlen call goes to, and in which order they are enqueued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Schedule {
    /// Streams used, 1 ..= the most allowed (never more than there are runs); stream 0 is the
    /// runtime's own.
    pub(crate) streams: usize,
    /// `(run index, stream)` in enqueue order.
    pub(crate) order: Vec<(usize, usize)>,
    /// Most query rows of the runs of each stream (the size of its LSE staging).
    pub(crate) rows: Vec<usize>,
}

/// Spreads `runs` over at most `max_streams` streams. With one stream (or one run) the runs go
/// to the runtime's stream in packed order, as they always did. Otherwise longest first, each
/// onto the stream with the least estimated work so far ([`run_cost`]; the lowest index on a
/// tie, so the longest run goes to the runtime's own stream): the long runs start first and the
/// short ones fill the GPU beside them and behind them, instead of leaving it idle while a
/// short run's few CTAs finish alone.
pub(crate) fn schedule_runs(runs: &[Run], causal: bool, max_streams: usize) -> Schedule {
    let streams = max_streams.min(runs.len()).max(1);
    let mut order: Vec<usize> = (0..runs.len()).collect();
    if streams > 1 {
        // Stable: equal costs keep their packed order.
        order.sort_by_key(|&i| std::cmp::Reverse(run_cost(&runs[i], causal)));
    }
    let mut load = vec![0u128; streams];
    let mut rows = vec![0usize; streams];
    let order = order
        .into_iter()
        .map(|i| {
            let stream = (0..streams).min_by_key(|&s| load[s]).unwrap_or(0);
            load[stream] += run_cost(&runs[i], causal);
            rows[stream] = rows[stream].max(runs[i].q_rows().len());
            (i, stream)
        })
        .collect();
    Schedule {
        streams,
        order,
        rows,
    }
}

/// Copies a run's LSE, `[run.count][heads][run.q_len]` contiguous at the start of `src` (what
/// the batched call writes), into the packed LSE at `dst`, `[heads][total]` f32, at columns
/// `run.q_rows()`, on `rt`'s stream: one 2-d copy per sequence (`heads` rows of `q_len` floats)
/// or one per head (`count` rows of `q_len` floats, contiguous in `dst`), whichever takes fewer.
///
/// # Safety
///
/// `dst` is the address of `heads * total` f32 of device memory of `rt`'s context, and the
/// caller orders the copy with every other access to them (the varlen call holds their access
/// guard on the runtime's stream until its worker streams are joined back into it).
pub(crate) unsafe fn copy_lse_run(
    rt: &Runtime,
    src: &CudaSlice<f32>,
    dst_ptr: u64,
    heads: usize,
    run: &Run,
    total: usize,
) -> Result<()> {
    let (len, count) = (run.q_len, run.count);
    debug_assert!(src.len() >= count * heads * len);
    debug_assert!(run.q_rows().end <= total);
    rt.bind()?;
    let stream = rt.stream();
    let (src_ptr, _src_guard) = src.device_ptr(stream);
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
        // the runtime's context, bound by the caller, who orders the copy with other users of
        // the two buffers (an access guard, or the varlen call's fork and join).
        unsafe { sys::cuMemcpy2DAsync_v2(&copy, rt.stream().cu_stream()) }.result()
    }
}

/// Writes what the batched call writes for query rows that see no key, for a sequence whose K is
/// empty (which the batched call, refusing empty tensors, cannot be asked for): zeros into
/// `out` (that sequence's rows of the packed output, `[1, heads, len, head_dim]`) and `-inf` into
/// the packed LSE at `lse` (`[heads][total]` f32) at columns `rows` when given. 2-d memsets on
/// the runtime's stream, one per head for the output.
///
/// # Safety
///
/// As for [`copy_lse_run`]'s `dst`: `lse` is the address of `heads * total` f32 of device memory
/// of `rt`'s context, and the caller orders the memset with every other access to them.
pub(crate) unsafe fn fill_rows_without_keys(
    rt: &Runtime,
    out: &mut TensorViewMut,
    lse: Option<u64>,
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
    if let Some(lse_ptr) = lse {
        let ptr = lse_ptr + (rows.start * F32) as u64;
        // SAFETY: `heads` rows of the packed LSE, `total` floats apart, columns `rows` (inside
        // the buffer, which holds `heads * total` floats: validated, and the caller's promise).
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

    /// Runs of single sequences with the given `(q_len, k_len)`, packed one after the other.
    fn singles(lens: &[(usize, usize)]) -> Vec<Run> {
        equal_length_runs(&batch(lens), 1)
    }

    #[test]
    fn visible_pairs_follow_the_bottom_right_mask() {
        // Brute force over small shapes: query i sees key j iff j <= i + k - q.
        for q in 1..12u128 {
            for k in 1..12u128 {
                let brute = (0..q)
                    .map(|i| (0..k).filter(|&j| j + q <= i + k).count() as u128)
                    .sum::<u128>();
                assert_eq!(visible_pairs(q, k, true), brute, "q {q} k {k}");
                assert_eq!(visible_pairs(q, k, false), q * k);
            }
        }
    }

    #[test]
    fn one_run_or_one_stream_keeps_the_packed_order_on_the_runtime_stream() {
        let runs = singles(&[(100, 100), (5000, 5000), (300, 300)]);
        let s = schedule_runs(&runs, false, 1);
        assert_eq!(s.streams, 1);
        assert_eq!(s.order, [(0, 0), (1, 0), (2, 0)]);
        assert_eq!(s.rows, [5000]);
        let s = schedule_runs(&runs[1..2], true, 4);
        assert_eq!((s.streams, s.order, s.rows), (1, vec![(0, 0)], vec![5000]));
        // No runs at all (every sequence without queries or keys): one stream, nothing on it.
        let s = schedule_runs(&[], false, 4);
        assert_eq!((s.streams, s.order.len(), s.rows), (1, 0, vec![0]));
    }

    #[test]
    fn fewer_runs_than_streams_get_a_stream_each_longest_on_the_runtime_stream() {
        let runs = singles(&[(128, 128), (8000, 8000)]);
        let s = schedule_runs(&runs, false, 4);
        assert_eq!(s.streams, 2);
        assert_eq!(s.order, [(1, 0), (0, 1)]);
        assert_eq!(s.rows, [8000, 128]);
    }

    /// Longest first, each onto the least-loaded stream (lowest index on ties), worked by hand:
    /// squares of 8..1 thousand rows (cost ≈ side², the preparation term aside), 3 streams.
    #[test]
    fn longest_first_onto_the_least_loaded_stream() {
        let lens: Vec<_> = [3, 8, 1, 6, 4, 7, 2, 5]
            .iter()
            .map(|&t| (t * 1000, t * 1000))
            .collect();
        let runs = singles(&lens);
        let s = schedule_runs(&runs, false, 3);
        // Sides in enqueue order 8, 7, 6, 5, 4, 3, 2, 1 (indices 1, 5, 3, 7, 4, 0, 6, 2).
        // Loads (in millions): 64 | 49 | 36; 5² → stream 2 (61); 4² → 1 (65); 3² → 2 (70);
        // 2² → 0 (68); 1² → 1 (66).
        assert_eq!(
            s.order,
            [
                (1, 0),
                (5, 1),
                (3, 2),
                (7, 2),
                (4, 1),
                (0, 2),
                (6, 0),
                (2, 1)
            ]
        );
        assert_eq!(s.rows, [8000, 7000, 6000]);
    }

    /// Causal masking changes the order: a chunk of queries against a long cached context
    /// attends more pairs than a square sequence with more queries.
    #[test]
    fn causal_cost_counts_visible_pairs() {
        let runs = singles(&[(2000, 2000), (1500, 4000)]);
        // Full: 4.0M vs 6.0M pairs. Causal: 2.0M vs 6.0M - 1.1M = 4.9M. Either way the chunk
        // first.
        assert_eq!(schedule_runs(&runs, false, 2).order[0].0, 1);
        assert_eq!(schedule_runs(&runs, true, 2).order[0].0, 1);
        let runs = singles(&[(3000, 3000), (1000, 8000)]);
        // Causal: 4.5M vs 8M - 0.5M = 7.5M: the chunk first; full: 9M vs 8M, the square.
        assert_eq!(schedule_runs(&runs, true, 2).order[0].0, 1);
        assert_eq!(schedule_runs(&runs, false, 2).order[0].0, 0);
        // A run of several sequences counts each.
        let runs = singles(&[(1000, 1000), (1000, 1000), (1000, 1000), (1500, 1500)]);
        assert_eq!(runs.len(), 2);
        assert_eq!(schedule_runs(&runs, false, 2).order[0].0, 0);
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

        /// Every run is scheduled once; with several streams the order is by non-increasing
        /// cost and each run goes to a stream that was least loaded when it was placed; the
        /// staging rows fit every run of their stream.
        #[test]
        fn schedule_places_every_run_once_on_a_least_loaded_stream(
            lens in prop::collection::vec((1usize..3000, 1usize..3000), 1..40),
            causal in any::<bool>(),
            max_streams in 1usize..=8,
        ) {
            let runs = equal_length_runs(&batch(&lens), 2);
            let s = schedule_runs(&runs, causal, max_streams);
            prop_assert_eq!(s.streams, max_streams.min(runs.len()).max(1));
            prop_assert_eq!(s.rows.len(), s.streams);
            let mut seen: Vec<usize> = s.order.iter().map(|&(i, _)| i).collect();
            seen.sort_unstable();
            prop_assert_eq!(seen, (0..runs.len()).collect::<Vec<_>>());
            let mut load = vec![0u128; s.streams];
            let mut prev = u128::MAX;
            for &(i, stream) in &s.order {
                let cost = run_cost(&runs[i], causal);
                if s.streams > 1 {
                    prop_assert!(cost <= prev);
                    prev = cost;
                }
                prop_assert!(stream < s.streams);
                prop_assert_eq!(load[stream], *load.iter().min().unwrap());
                prop_assert!(runs[i].q_rows().len() <= s.rows[stream]);
                load[stream] += cost;
            }
            if s.streams == 1 {
                prop_assert!(s.order.iter().enumerate().all(|(n, &(i, st))| i == n && st == 0));
            }
        }
    }
}
