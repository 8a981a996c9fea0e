//! The NCCL transport (cargo feature `nccl`): K/V shards move between GPUs with `ncclSend` /
//! `ncclRecv` in one group per shift, the agreement's all-reduce with `ncclAllReduce`, through
//! cudarc's NCCL bindings. `libnccl.so.2` is loaded at run time, like the driver: a build with
//! the feature runs on machines without NCCL until a transport is created, which then returns
//! [`Error::Transport`] instead of panicking.
//!
//! One [`NcclRing`] drives the ranks of its communicators: one communicator per thread (a thread
//! or process per GPU, [`NcclRing::for_rank`]) or all of them from one thread
//! ([`NcclRing::for_devices`], NCCL group calls). The communicators' streams are where the
//! transfers run: give each a stream of its own, beside the rank's compute stream, and
//! transfers are ordered with the compute through cudarc's per-buffer events (after each group the
//! transport records fresh events on the buffers it used, since NCCL enqueues grouped operations
//! only when the group ends).

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use cudarc::nccl::{group_end, group_start, Comm, Id, NcclType, ReduceOp};

use super::gpu::{DeviceKv, KvData};
use super::transport::{RingShift, RingTransport};
use crate::types::error::{CudaResultExt, Error, Result};

/// A ring over NCCL communicators; see the module.
pub struct NcclRing {
    /// The communicators this thread drives, by ascending rank.
    comms: Vec<Comm>,
    /// Each local rank's receive buffer ([`RingShift::prepare`]).
    spares: Vec<Option<DeviceKv>>,
}

/// `Error::Transport` from an NCCL result.
fn nccl_error(op: &str) -> impl FnOnce(cudarc::nccl::result::NcclError) -> Error + '_ {
    move |e| Error::Transport {
        op: op.into(),
        reason: format!("NCCL returned {:?}", e.0),
    }
}

/// Runs `f` between `ncclGroupStart` and `ncclGroupEnd` (the end is called whatever `f` returns).
fn in_group(op: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
    group_start().map_err(nccl_error(op))?;
    let inner = f();
    let end = group_end().map_err(nccl_error(op));
    inner.and(end.map(|_| ()))
}

/// Whether `libnccl` can be loaded.
pub fn nccl_available() -> bool {
    // SAFETY: only tries to dlopen the library by its usual names.
    unsafe { cudarc::nccl::sys::is_culib_present() }
}

fn require_nccl() -> Result<()> {
    if nccl_available() {
        Ok(())
    } else {
        Err(Error::Transport {
            op: "loading NCCL".into(),
            reason: "libnccl.so.2 was not found (install NCCL or put it on LD_LIBRARY_PATH)".into(),
        })
    }
}

impl NcclRing {
    /// A new unique id, to be made on one rank and given to every other (in one process: copy
    /// it to each thread) before [`NcclRing::for_rank`].
    pub fn unique_id() -> Result<Id> {
        require_nccl()?;
        Id::new().map_err(nccl_error("creating an NCCL unique id"))
    }

    /// This thread drives rank `rank` of `world`, transferring on `stream` (of the rank's GPU).
    /// Blocks until every rank has joined.
    pub fn for_rank(stream: Arc<CudaStream>, rank: usize, world: usize, id: Id) -> Result<Self> {
        require_nccl()?;
        let comm = Comm::from_rank(stream, rank, world, id)
            .map_err(nccl_error("joining the NCCL communicator"))?;
        Self::from_comms(vec![comm])
    }

    /// This thread drives every rank, rank `i` transferring on `streams[i]` (one GPU each).
    pub fn for_devices(streams: Vec<Arc<CudaStream>>) -> Result<Self> {
        require_nccl()?;
        let comms = Comm::from_devices(streams)
            .map_err(nccl_error("creating NCCL communicators for every device"))?;
        Self::from_comms(comms)
    }

    /// Drives the ranks of these communicators (of one world, distinct ranks).
    pub fn from_comms(mut comms: Vec<Comm>) -> Result<Self> {
        comms.sort_by_key(Comm::rank);
        let world = comms.first().map(Comm::world_size).unwrap_or(0);
        let distinct = comms.windows(2).all(|w| w[0].rank() < w[1].rank());
        if world == 0 || !distinct || comms.iter().any(|c| c.world_size() != world) {
            return Err(Error::InvalidOption(
                "an NCCL ring needs communicators of one world with distinct ranks".into(),
            ));
        }
        let spares = comms.iter().map(|_| None).collect();
        Ok(NcclRing { comms, spares })
    }

    fn check_len(&self, n: usize, op: &str) -> Result<()> {
        if n == self.comms.len() {
            Ok(())
        } else {
            Err(Error::Transport {
                op: op.into(),
                reason: format!("{n} buffers for {} local ranks", self.comms.len()),
            })
        }
    }

    fn all_reduce<T: NcclType + cudarc::driver::DeviceRepr>(
        &mut self,
        bufs: &mut [Vec<T>],
        op: &str,
    ) -> Result<()> {
        self.check_len(bufs.len(), op)?;
        let mut dev: Vec<CudaSlice<T>> = self
            .comms
            .iter()
            .zip(bufs.iter())
            .map(|(c, b)| c.stream().clone_htod(b).op("copying an all-reduce buffer"))
            .collect::<Result<_>>()?;
        in_group(op, || {
            for (c, d) in self.comms.iter().zip(dev.iter_mut()) {
                c.all_reduce_in_place(d, &ReduceOp::Sum)
                    .map_err(nccl_error(op))?;
            }
            Ok(())
        })?;
        for ((c, d), b) in self.comms.iter().zip(&dev).zip(bufs.iter_mut()) {
            // Same stream as the all-reduce: ordered after it.
            *b = c
                .stream()
                .clone_dtoh(d)
                .op("copying an all-reduce result")?;
            c.stream().synchronize().op("waiting for an all-reduce")?;
        }
        Ok(())
    }
}

impl RingTransport for NcclRing {
    fn world_size(&self) -> usize {
        self.comms[0].world_size()
    }

    fn local_ranks(&self) -> Vec<usize> {
        self.comms.iter().map(Comm::rank).collect()
    }

    fn all_reduce_sum_u64(&mut self, bufs: &mut [Vec<u64>]) -> Result<()> {
        self.all_reduce(bufs, "all-reducing u64 values")
    }

    fn all_reduce_sum_f32(&mut self, bufs: &mut [Vec<f32>]) -> Result<()> {
        self.all_reduce(bufs, "all-reducing f32 values")
    }
}

/// Sends K then V of `kv` to `peer`.
fn send_kv(comm: &Comm, kv: &DeviceKv, peer: i32, op: &str) -> Result<()> {
    match &kv.data {
        KvData::F16 { k, v } => {
            comm.send(k, peer).map_err(nccl_error(op))?;
            comm.send(v, peer).map_err(nccl_error(op))
        }
        KvData::BF16 { k, v } => {
            comm.send(k, peer).map_err(nccl_error(op))?;
            comm.send(v, peer).map_err(nccl_error(op))
        }
    }
}

/// Receives K then V from `peer` into `kv`.
fn recv_kv(comm: &Comm, kv: &mut DeviceKv, peer: i32, op: &str) -> Result<()> {
    match &mut kv.data {
        KvData::F16 { k, v } => {
            comm.recv(k, peer).map_err(nccl_error(op))?;
            comm.recv(v, peer).map_err(nccl_error(op)).map(|_| ())
        }
        KvData::BF16 { k, v } => {
            comm.recv(k, peer).map_err(nccl_error(op))?;
            comm.recv(v, peer).map_err(nccl_error(op)).map(|_| ())
        }
    }
}

/// Records fresh read events on the sent buffers and write events on the received ones, on the
/// communicator's stream, now that the group has enqueued the transfers.
fn touch(stream: &Arc<CudaStream>, sent: &DeviceKv, received: &mut DeviceKv) {
    fn read<T>(s: &CudaSlice<T>, stream: &Arc<CudaStream>) {
        let _ = s.device_ptr(stream);
    }
    fn write<T>(s: &mut CudaSlice<T>, stream: &Arc<CudaStream>) {
        let _ = s.device_ptr_mut(stream);
    }
    match (&sent.data, &mut received.data) {
        (KvData::F16 { k, v }, KvData::F16 { k: rk, v: rv }) => {
            read(k, stream);
            read(v, stream);
            write(rk, stream);
            write(rv, stream);
        }
        (KvData::BF16 { k, v }, KvData::BF16 { k: rk, v: rv }) => {
            read(k, stream);
            read(v, stream);
            write(rk, stream);
            write(rv, stream);
        }
        // Never: a receive buffer is allocated like the payload it replaces.
        _ => {}
    }
}

impl RingShift<DeviceKv> for NcclRing {
    fn prepare(&mut self, local_index: usize, own: &DeviceKv) -> Result<()> {
        let comm = self
            .comms
            .get(local_index)
            .ok_or_else(|| Error::Transport {
                op: "preparing the shift".into(),
                reason: format!("no local rank {local_index}"),
            })?;
        if own.ordinal() != comm.ordinal() {
            return Err(Error::WrongDevice {
                tensor: "k",
                expected: comm.ordinal(),
                got: own.ordinal(),
            });
        }
        self.spares[local_index] = Some(own.alloc_like(&comm.stream())?);
        Ok(())
    }

    fn shift(&mut self, held: &mut [DeviceKv]) -> Result<()> {
        const OP: &str = "passing K/V shards around the ring";
        self.check_len(held.len(), OP)?;
        let world = self.world_size();
        let NcclRing { comms, spares } = self;
        let mut spare: Vec<&mut DeviceKv> = spares
            .iter_mut()
            .map(|s| {
                s.as_mut().ok_or_else(|| Error::Transport {
                    op: OP.into(),
                    reason: "shift before prepare".into(),
                })
            })
            .collect::<Result<_>>()?;
        in_group(OP, || {
            for ((comm, kv), recv) in comms.iter().zip(held.iter()).zip(spare.iter_mut()) {
                let r = comm.rank();
                send_kv(comm, kv, ((r + 1) % world) as i32, OP)?;
                recv_kv(comm, recv, ((r + world - 1) % world) as i32, OP)?;
            }
            Ok(())
        })?;
        for ((comm, kv), recv) in comms.iter().zip(held.iter_mut()).zip(spare) {
            touch(&comm.stream(), kv, recv);
            std::mem::swap(kv, recv);
        }
        Ok(())
    }
}
