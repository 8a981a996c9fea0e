//! The ring on GPUs: [`ring_sageattn`] runs each local rank's attention calls through the
//! library's [`sageattn`] and merges the partial outputs with the LSE merge.
//!
//! Correct first, as the varlen path was: every block is one `sageattn` call with the LSE, whose
//! output is copied to the host and merged there in f32 (the library has no merge kernel yet), and
//! the merged result is copied back. K's mean for smoothing is that of the K rows each call gets
//! (the call's own smoothing), not the whole sequence's — softmax and, through the library's LSE
//! correction, the LSE are exact either way, so the merge stays exact; only the INT8 rounding of
//! K differs from one call on the whole sequence. K and V travel as the input dtype. The
//! `smooth` module and docs/design.md (*Context parallelism*) say what the library needs so
//! that the global mean is used and INT8 K travels instead.

use std::sync::Arc;

use cudarc::driver::{sys, CudaSlice, CudaStream, DevicePtrMut, DeviceRepr};
use half::{bf16, f16};

use super::agree::Descriptor;
use super::driver::{drive, RankWork, ReadyRank};
use super::layout::Sharding;
use super::merge::Accumulator;
use super::plan::Block;
use super::transport::RingShift;
use crate::attention::{sageattn, Output};
use crate::device::runtime::Runtime;
use crate::device::tensor::{Tensor, TensorView};
use crate::launch::dispatch::select;
use crate::launch::validate::{check_on_device, check_problem};
use crate::types::dtype::{DType, Element, Layout};
use crate::types::error::{CudaResultExt, Error, Result};
use crate::types::options::Options;

/// One local rank's inputs: its runtime (device and stream) and its shards, Q `[batch, q_heads,
/// shard_len, d]` and K, V `[batch, kv_heads, shard_len, d]` (any valid strides; f16 or bf16),
/// where `shard_len` is [`Sharding::shard_len`] of the rank (its chunks, ascending).
pub struct RankInputs<'a> {
    /// The rank's runtime.
    pub rt: &'a Runtime,
    /// Q shard.
    pub q: TensorView<'a>,
    /// K shard.
    pub k: TensorView<'a>,
    /// V shard.
    pub v: TensorView<'a>,
}

/// K and V of one 16-bit dtype.
pub(crate) enum KvData {
    F16 {
        k: CudaSlice<f16>,
        v: CudaSlice<f16>,
    },
    BF16 {
        k: CudaSlice<bf16>,
        v: CudaSlice<bf16>,
    },
}

/// A K/V shard as it travels: K and V each `[batch][kv_heads][capacity][head_dim]` contiguous,
/// `capacity` = the longest shard, so that every rank sends and receives buffers of one size; a
/// shard of fewer rows leaves the last rows of each head unused.
pub struct DeviceKv {
    pub(crate) data: KvData,
    batch: usize,
    heads: usize,
    capacity: usize,
    head_dim: usize,
}

impl DeviceKv {
    /// Zeroed buffers for `[batch, heads, capacity, head_dim]` of `dtype` on `stream`.
    pub(crate) fn alloc(
        stream: &Arc<CudaStream>,
        dtype: DType,
        [batch, heads, capacity, head_dim]: [usize; 4],
    ) -> Result<Self> {
        let n = batch * heads * capacity * head_dim;
        let what = || format!("allocating a K/V shard of 2 × {n} elements");
        let data = match dtype {
            DType::F16 => KvData::F16 {
                k: stream.alloc_zeros(n).with_op(what)?,
                v: stream.alloc_zeros(n).with_op(what)?,
            },
            DType::BF16 => KvData::BF16 {
                k: stream.alloc_zeros(n).with_op(what)?,
                v: stream.alloc_zeros(n).with_op(what)?,
            },
            other => {
                return Err(Error::UnsupportedDType {
                    tensor: "k",
                    dtype: other,
                    supported: &[DType::F16, DType::BF16],
                })
            }
        };
        Ok(DeviceKv {
            data,
            batch,
            heads,
            capacity,
            head_dim,
        })
    }

    /// Empty buffers of the same size and dtype on `stream` (a receive buffer).
    #[cfg_attr(not(feature = "nccl"), allow(dead_code))]
    pub(crate) fn alloc_like(&self, stream: &Arc<CudaStream>) -> Result<Self> {
        let dtype = match self.data {
            KvData::F16 { .. } => DType::F16,
            KvData::BF16 { .. } => DType::BF16,
        };
        Self::alloc(
            stream,
            dtype,
            [self.batch, self.heads, self.capacity, self.head_dim],
        )
    }

    /// The device the buffers live on.
    pub fn ordinal(&self) -> usize {
        match &self.data {
            KvData::F16 { k, .. } => k.ordinal(),
            KvData::BF16 { k, .. } => k.ordinal(),
        }
    }

    /// Rows a head can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes of K and V together (what one shift sends per rank).
    pub fn bytes(&self) -> usize {
        2 * 2 * self.batch * self.heads * self.capacity * self.head_dim
    }

    /// Views of the first `rows` rows of each head of K and V.
    pub fn views(&self, rows: usize) -> Result<(TensorView<'_>, TensorView<'_>)> {
        let shape = [self.batch, self.heads, rows, self.head_dim];
        let (h, c, d) = (
            self.heads as i64,
            self.capacity as i64,
            self.head_dim as i64,
        );
        let strides = [h * c * d, c * d, d, 1];
        if rows > self.capacity {
            return Err(Error::OutOfBounds {
                tensor: "k",
                reason: format!("{rows} rows of a shard buffer of {}", self.capacity),
            });
        }
        Ok(match &self.data {
            KvData::F16 { k, v } => (
                TensorView::from_slice_strided(k, shape, strides)?,
                TensorView::from_slice_strided(v, shape, strides)?,
            ),
            KvData::BF16 { k, v } => (
                TensorView::from_slice_strided(k, shape, strides)?,
                TensorView::from_slice_strided(v, shape, strides)?,
            ),
        })
    }

    /// Copies the rank's own K and V views (validated, on `rt`'s device) into the buffers.
    fn fill(&mut self, rt: &Runtime, k: &TensorView, v: &TensorView) -> Result<()> {
        let cap = self.capacity;
        match &mut self.data {
            KvData::F16 { k: kb, v: vb } => {
                copy_rows(rt, k, kb, cap)?;
                copy_rows(rt, v, vb, cap)
            }
            KvData::BF16 { k: kb, v: vb } => {
                copy_rows(rt, k, kb, cap)?;
                copy_rows(rt, v, vb, cap)
            }
        }
    }
}

/// Copies `src` (`[b, h, s, d]`, any valid strides) into `dst` laid out `[b][h][capacity][d]`:
/// one 2-d copy (rows of `d` elements) per (batch, head), on `rt`'s stream.
fn copy_rows<T: Element + DeviceRepr>(
    rt: &Runtime,
    src: &TensorView,
    dst: &mut CudaSlice<T>,
    capacity: usize,
) -> Result<()> {
    let [batch, heads, rows, d] = src.shape();
    let es = src.dtype().size_bytes();
    let st = src.strides().map(|s| s as usize);
    rt.bind()?;
    let stream = rt.stream();
    let (src_ptr, _src_guard) = src.device_ptr(stream);
    let (dst_ptr, _dst_guard) = dst.device_ptr_mut(stream);
    let width = d * es;
    for b in 0..batch {
        for h in 0..heads {
            let copy = sys::CUDA_MEMCPY2D {
                srcXInBytes: 0,
                srcY: 0,
                srcMemoryType: sys::CUmemorytype::CU_MEMORYTYPE_DEVICE,
                srcHost: std::ptr::null(),
                srcDevice: src_ptr + ((b * st[0] + h * st[1]) * es) as u64,
                srcArray: std::ptr::null_mut(),
                // A single row may have any stride; the pitch must still cover the row.
                srcPitch: (st[2] * es).max(width),
                dstXInBytes: 0,
                dstY: 0,
                dstMemoryType: sys::CUmemorytype::CU_MEMORYTYPE_DEVICE,
                dstHost: std::ptr::null_mut(),
                dstDevice: dst_ptr + (((b * heads + h) * capacity) * width) as u64,
                dstArray: std::ptr::null_mut(),
                dstPitch: width,
                WidthInBytes: width,
                Height: rows,
            };
            // SAFETY: `src` was validated (its extent lies inside its slice and every row has
            // `d` contiguous elements at `st[2]` apart) and checked to be memory of `rt`'s
            // device; `dst` holds `batch * heads * capacity * d` elements with `rows <=
            // capacity`; the context is bound and the guards order the copy with the slices'
            // other users on any stream.
            unsafe { sys::cuMemcpy2DAsync_v2(&copy, stream.cu_stream()) }
                .result()
                .with_op(|| format!("copying head ({b}, {h}) of a K/V shard"))?;
        }
    }
    Ok(())
}

/// A GPU rank's work: its Q shard, options and the running merge.
struct GpuRank<'a> {
    rt: &'a Runtime,
    q: TensorView<'a>,
    sharding: &'a Sharding,
    opts: Options,
    dtype: DType,
    acc: Accumulator<f32>,
    out: Option<Output>,
}

impl RankWork for GpuRank<'_> {
    type Kv = DeviceKv;

    fn attend(&mut self, kv: &DeviceKv, source: usize, blocks: &[Block]) -> Result<()> {
        let (k, v) = kv.views(self.sharding.shard_len(source))?;
        for b in blocks {
            let q = self.q.narrow(2, b.q.start, b.q.len())?;
            let (kb, vb) = (
                k.narrow(2, b.k.start, b.k.len())?,
                v.narrow(2, b.k.start, b.k.len())?,
            );
            let opts = Options {
                causal: b.causal,
                return_lse: true,
                layout: Layout::Hnd,
                ..self.opts
            };
            let part = sageattn(self.rt, &q, &kb, &vb, &opts)?;
            let o = part.o.to_host_f32(self.rt)?;
            let lse_dev = part
                .lse
                .as_ref()
                .ok_or_else(|| Error::InvalidOption("a partial call returned no LSE".into()))?;
            let lse = self
                .rt
                .stream()
                .clone_dtoh(lse_dev)
                .op("copying a partial LSE to the host")?;
            self.rt.synchronize()?;
            self.acc.merge_block(b.q.clone(), &o, &lse);
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        let a = &self.acc;
        let shape = [a.batch, a.heads, a.rows, a.width];
        let o = Tensor::from_host_f32(self.rt, &a.o, self.dtype, shape, self.opts.layout)?;
        let lse = if self.opts.return_lse {
            Some(
                self.rt
                    .stream()
                    .clone_htod(&a.lse)
                    .op("copying the merged LSE to the device")?,
            )
        } else {
            None
        };
        self.rt.synchronize()?;
        self.out = Some(Output { o, lse });
        Ok(())
    }
}

/// Number of fields of the GPU ring's descriptor.
const GPU_FIELDS: usize = 13;

/// Validates local rank `rank`'s inputs (the library's checks, the shard length, a kernel for
/// every block kind), then builds its travelling K/V shard and its accumulator.
fn ready_rank<'a>(
    inputs: RankInputs<'a>,
    rank: usize,
    sharding: &'a Sharding,
    opts: &Options,
) -> Result<ReadyRank<GpuRank<'a>>> {
    let RankInputs { rt, q, k, v } = inputs;
    let p = check_problem(&q, &k, &v, opts)?;
    let rows = sharding.shard_len(rank);
    if p.qo_len != rows || p.kv_len != rows {
        return Err(Error::ShapeMismatch {
            what: format!(
                "rank {rank} holds {} query and {} key rows, but its shard ({:?} over {} ranks \
                 of {} rows) has {rows}",
                p.qo_len,
                p.kv_len,
                sharding.layout(),
                sharding.world(),
                sharding.seq_len()
            ),
        });
    }
    check_on_device(rt, &q, &k, &v)?;
    for causal in [false, opts.causal] {
        select(rt, &p, &Options { causal, ..*opts })?;
    }
    let mut kv = DeviceKv::alloc(
        rt.stream(),
        p.in_dtype,
        [p.batch, p.kv_heads, sharding.max_shard_len(), p.head_dim],
    )?;
    kv.fill(rt, &k, &v)?;
    let descriptor = Descriptor(vec![
        ("seq_len", sharding.seq_len() as u64),
        ("layout", sharding.layout().code()),
        ("batch", p.batch as u64),
        ("q_heads", p.q_heads as u64),
        ("kv_heads", p.kv_heads as u64),
        ("head_dim", p.head_dim as u64),
        ("dtype", if p.in_dtype == DType::BF16 { 2 } else { 1 }),
        ("causal", u64::from(opts.causal)),
        ("smooth_k", u64::from(opts.smooth_k)),
        ("sm_scale", u64::from(p.sm_scale.to_bits())),
        ("pv_accum", opts.pv_accum as u64),
        ("pv_precision", opts.pv_precision as u64),
        ("return_lse", u64::from(opts.return_lse)),
    ]);
    Ok(ReadyRank {
        work: GpuRank {
            rt,
            q,
            sharding,
            opts: *opts,
            dtype: p.in_dtype,
            acc: Accumulator::new(p.batch, p.q_heads, rows, p.head_dim),
            out: None,
        },
        kv,
        descriptor,
    })
}

/// Context-parallel SageAttention: the local ranks of `transport` each hold a shard of one
/// sequence's Q, K and V (`inputs[i]` is local rank `i`'s, laid out as `sharding` says); K/V
/// shards travel around the ring and each rank returns the attention of its queries over the
/// whole sequence — what [`sageattn`] on the whole sequence returns for those rows, up to
/// quantization (see the module's notes) — as an [`Output`] on its own device (output in
/// `opts.layout`, LSE `[batch][q_heads][shard_len]` when `opts.return_lse`).
///
/// Every rank checks its inputs before the first collective and the ranks agree: an invalid
/// input on one rank is its typed error there and [`Error::RingPeerFailed`] on every other
/// rank; ranks given different problems all return [`Error::RingMismatch`]; nothing hangs.
/// Causal masking is over the whole sequence (self-attention: `qo_len == kv_len`).
pub fn ring_sageattn<X>(
    transport: &mut X,
    sharding: &Sharding,
    inputs: Vec<RankInputs<'_>>,
    opts: &Options,
) -> Vec<Result<Output>>
where
    X: RingShift<DeviceKv> + ?Sized,
{
    let ranks = transport.local_ranks();
    let ready = inputs
        .into_iter()
        .enumerate()
        .map(|(i, inputs)| {
            let rank = *ranks.get(i).ok_or_else(|| {
                Error::InvalidOption(format!("input {i} has no local rank ({ranks:?})"))
            })?;
            ready_rank(inputs, rank, sharding, opts)
        })
        .collect();
    drive(transport, sharding, opts.causal, GPU_FIELDS, ready)
        .into_iter()
        .map(|w| {
            w.and_then(|mut w| {
                w.out
                    .take()
                    .ok_or_else(|| Error::InvalidOption("a rank finished without output".into()))
            })
        })
        .collect()
}
