//! Host stand-ins for the `kernels-gpu/src/ptx.rs` wrappers that the device's pure arithmetic
//! modules call, so that those modules' own source compiles into a host test (`#[path]`). Each one
//! follows the PTX ISA's definition of its instruction, written from the definition rather than
//! from the reference code the tests compare with (the e4m3 conversion is a nearest-value search
//! over the format's codes, not `float8`).
//!
//! Collective instructions need their threads together: [`run_cta`] runs a closure on the threads
//! of one CTA, which meet at a barrier for each shuffle and vote (per warp) and `bar.sync` (the
//! CTA); shared memory is an array of words from address 0, global memory the host's own (a
//! device pointer here is a host address). The tensor-core instructions and `ldmatrix` have no
//! stand-in (they panic if reached).
#![allow(dead_code)]

use half::{bf16, f16};

/// `fma.rn.f32`: one rounding.
pub fn fma(a: f32, b: f32, c: f32) -> f32 {
    a.mul_add(b, c)
}

/// `mul.rn.f32` (Rust never contracts a product into a following add).
pub fn mul_rn(a: f32, b: f32) -> f32 {
    a * b
}

/// `add.rn.f32`.
pub fn add_rn(a: f32, b: f32) -> f32 {
    a + b
}

/// `prmt.b32` in its default mode: byte `i` of the result is byte `sel >> 4i & 7` of the eight
/// bytes `hi:lo`, or, where bit 3 of that nibble is set, that byte's sign bit copied into all 8.
pub fn prmt(lo: u32, hi: u32, sel: u32) -> u32 {
    let bytes = (u64::from(hi) << 32) | u64::from(lo);
    (0..4).fold(0u32, |out, i| {
        let nibble = (sel >> (4 * i)) & 0xf;
        let byte = ((bytes >> (8 * (nibble & 7))) & 0xff) as u32;
        let byte = if nibble & 8 != 0 {
            if byte & 0x80 != 0 {
                0xff
            } else {
                0
            }
        } else {
            byte
        };
        out | (byte << (8 * i))
    })
}

/// `abs.f32` then `max.NaN.f32`: NaN if either is NaN.
pub fn max_nan_abs(acc: f32, x: f32) -> f32 {
    max_nan(acc, x.abs())
}

/// `cvt.rni.sat.s8.f32`: round to nearest even, clamp to [−128, 127], NaN → 0; sign-extended.
pub fn cvt_rni_sat_s8(x: f32) -> i32 {
    if x.is_nan() {
        0
    } else {
        x.round_ties_even().clamp(-128.0, 127.0) as i32
    }
}

/// `mov.b32 {lo, hi}` then `cvt.f32.f16` of each half.
pub fn unpack_f16x2(x: u32) -> (f32, f32) {
    (
        f16::from_bits(x as u16).to_f32(),
        f16::from_bits((x >> 16) as u16).to_f32(),
    )
}

/// The same for bf16 halves.
pub fn unpack_bf16x2(x: u32) -> (f32, f32) {
    (
        bf16::from_bits(x as u16).to_f32(),
        bf16::from_bits((x >> 16) as u16).to_f32(),
    )
}

/// The value of e4m3 code `c` (1 sign, 4 exponent bits with bias 7, 3 mantissa bits; no
/// infinities, 0x7f and 0xff are NaN).
fn e4m3_value(c: u8) -> f32 {
    let magnitude = c & 0x7f;
    if magnitude == 0x7f {
        return f32::NAN;
    }
    let (e, m) = (i32::from(magnitude >> 3), f32::from(magnitude & 7));
    let v = if e == 0 {
        m / 8.0 * 2f32.powi(-6)
    } else {
        (1.0 + m / 8.0) * 2f32.powi(e - 7)
    };
    if c & 0x80 != 0 {
        -v
    } else {
        v
    }
}

/// `cvt.rn.satfinite.e4m3x2.f32` of one value: the nearest finite e4m3 (ties to the even code),
/// beyond ±448 the largest finite of that sign, NaN → 0x7f.
pub fn cvt_e4m3(x: f32) -> u8 {
    if x.is_nan() {
        return 0x7f;
    }
    let sign = if x.is_sign_negative() { 0x80 } else { 0 };
    let a = f64::from(x.abs());
    if a >= 448.0 {
        // satfinite: ±∞ and everything past the largest finite code (448, 0x7e) saturate to it.
        return sign | 0x7e;
    }
    let (mut best, mut d_best) = (0u8, a);
    for c in 1..0x7f_u8 {
        let d = (f64::from(e4m3_value(c)) - a).abs();
        if d < d_best || (d == d_best && c & 1 == 0) {
            (best, d_best) = (c, d);
        }
    }
    sign | best
}

/// Four f32 as e4m3 bytes, `a` lowest (what the wrapper's two `cvt … e4m3x2` and `mov.b32` give).
pub fn pack_e4m3x4(a: f32, b: f32, c: f32, d: f32) -> u32 {
    u32::from_le_bytes([cvt_e4m3(a), cvt_e4m3(b), cvt_e4m3(c), cvt_e4m3(d)])
}

/// `max.NaN.f32`: NaN if either is NaN.
pub fn max_nan(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else {
        a.max(b)
    }
}

/// `ex2.approx.ftz.f32`, modelled as the exact `2^x` (the hardware is within 2 ulp of it) with
/// subnormal results flushed to zero; `2^-∞ = 0`.
pub fn ex2(x: f32) -> f32 {
    let r = x.exp2();
    if r.is_subnormal() {
        0.0
    } else {
        r
    }
}

/// Where the calling thread runs (set by [`run_cta`]): its thread index, its warp and its CTA.
struct Lane {
    tid: u32,
    warp: std::sync::Arc<Warp>,
    cta: std::sync::Arc<Cta>,
}

thread_local! {
    static LANE: std::cell::RefCell<Option<Lane>> = const { std::cell::RefCell::new(None) };
}

/// A barrier of `n` threads with a timeout, so that a thread that never arrives fails the test
/// instead of hanging it.
struct Gate {
    n: u32,
    arrived: std::sync::Mutex<(u32, u64)>,
    turn: std::sync::Condvar,
}

impl Gate {
    fn new(n: u32) -> Self {
        Gate {
            n,
            arrived: std::sync::Mutex::new((0, 0)),
            turn: std::sync::Condvar::new(),
        }
    }

    fn sync(&self) {
        let mut state = self.arrived.lock().unwrap();
        let generation = state.1;
        state.0 += 1;
        if state.0 == self.n {
            *state = (0, generation + 1);
            self.turn.notify_all();
            return;
        }
        while state.1 == generation {
            let (next, timeout) = self
                .turn
                .wait_timeout(state, std::time::Duration::from_secs(20))
                .unwrap();
            assert!(!timeout.timed_out(), "a thread never reached the barrier");
            state = next;
        }
    }
}

/// What one warp's lanes share: a slot per lane for the value a shuffle or vote offers.
struct Warp {
    slots: [std::sync::atomic::AtomicU32; 32],
    gate: Gate,
}

/// What a CTA's threads share: `bar.sync 0`, shared memory (4-byte words from address 0) and the
/// launch geometry.
struct Cta {
    threads: u32,
    block: (u32, u32, u32),
    grid_x: u32,
    gate: Gate,
    /// `bar.sync id, count` for `id` > 0: one barrier per id, made by its first arrival.
    named: std::sync::Mutex<std::collections::HashMap<u32, std::sync::Arc<Gate>>>,
    smem: Vec<std::sync::atomic::AtomicU32>,
}

/// The launch geometry of [`run_cta`].
#[derive(Clone, Copy)]
pub struct Launch {
    pub threads: u32,
    pub block: (u32, u32, u32),
    pub grid_x: u32,
    pub smem_bytes: usize,
}

/// Runs `thread_fn(tid)` on `launch.threads` threads that act as one CTA (warps of 32
/// consecutive threads, in lockstep at every shuffle and vote; the whole CTA at `bar.sync`) and
/// returns their results in thread order.
pub fn run_cta<R: Send>(launch: Launch, thread_fn: impl Fn(u32) -> R + Sync) -> Vec<R> {
    let n = launch.threads;
    let cta = std::sync::Arc::new(Cta {
        threads: n,
        block: launch.block,
        grid_x: launch.grid_x,
        gate: Gate::new(n),
        named: Default::default(),
        smem: (0..launch.smem_bytes.div_ceil(4))
            .map(|_| std::sync::atomic::AtomicU32::new(0))
            .collect(),
    });
    let warps: Vec<_> = (0..n.div_ceil(32))
        .map(|w| {
            std::sync::Arc::new(Warp {
                slots: std::array::from_fn(|_| std::sync::atomic::AtomicU32::new(0)),
                gate: Gate::new((n - 32 * w).min(32)),
            })
        })
        .collect();
    std::thread::scope(|scope| {
        let threads: Vec<_> = (0..n)
            .map(|tid| {
                let (warp, cta) = (warps[tid as usize / 32].clone(), cta.clone());
                let thread_fn = &thread_fn;
                scope.spawn(move || {
                    LANE.with(|l| *l.borrow_mut() = Some(Lane { tid, warp, cta }));
                    thread_fn(tid)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    })
}

/// Runs `lane_fn(lane)` on 32 threads that act as one warp (a CTA of one warp).
pub fn run_warp<R: Send>(lane_fn: impl Fn(u32) -> R + Sync) -> Vec<R> {
    let launch = Launch {
        threads: 32,
        block: (0, 0, 0),
        grid_x: 1,
        smem_bytes: 0,
    };
    run_cta(launch, lane_fn)
}

fn with_lane<R>(f: impl FnOnce(&Lane) -> R) -> R {
    LANE.with(|l| f(l.borrow().as_ref().expect("device code outside run_cta")))
}

/// `shfl.sync.bfly.b32` over the whole warp: lane `lane ^ mask`'s `x`.
pub fn shfl_xor_u32(x: u32, mask: u32) -> u32 {
    use std::sync::atomic::Ordering::SeqCst;
    with_lane(|lane| {
        let id = (lane.tid % 32) as usize;
        lane.warp.slots[id].store(x, SeqCst);
        lane.warp.gate.sync();
        let r = lane.warp.slots[id ^ mask as usize].load(SeqCst);
        lane.warp.gate.sync();
        r
    })
}

/// [`shfl_xor_u32`] for f32.
pub fn shfl_xor_f32(x: f32, mask: u32) -> f32 {
    f32::from_bits(shfl_xor_u32(x.to_bits(), mask))
}

/// `vote.sync.all.pred` over the whole warp.
pub fn vote_all(pred: bool) -> bool {
    use std::sync::atomic::Ordering::SeqCst;
    with_lane(|lane| {
        let size = lane.warp.gate.n as usize;
        lane.warp.slots[(lane.tid % 32) as usize].store(u32::from(pred), SeqCst);
        lane.warp.gate.sync();
        let all = lane.warp.slots[..size].iter().all(|s| s.load(SeqCst) != 0);
        lane.warp.gate.sync();
        all
    })
}

/// `cvt.rn.f16x2.f32`: `lo` in bits 0..16, `hi` in 16..32, each rounded to nearest even.
pub fn pack_f16x2(lo: f32, hi: f32) -> u32 {
    u32::from(f16::from_f32(lo).to_bits()) | (u32::from(f16::from_f32(hi).to_bits()) << 16)
}

/// Shared-memory loads have no host model: present so that `frag.rs` compiles; never called.
///
/// # Safety
/// None needed: it panics.
pub unsafe fn ldmatrix_x4(_addr: u32) -> [u32; 4] {
    unreachable!("ldmatrix has no host model")
}

/// As [`ldmatrix_x4`].
///
/// # Safety
/// None needed: it panics.
pub unsafe fn ldmatrix_x4_trans(_addr: u32) -> [u32; 4] {
    unreachable!("ldmatrix has no host model")
}

/// `%tid.x`.
pub fn thread_idx_x() -> u32 {
    with_lane(|l| l.tid)
}

/// `%ntid.x`.
pub fn block_dim_x() -> u32 {
    with_lane(|l| l.cta.threads)
}

/// `%ctaid.{x,y,z}`.
pub fn block_idx() -> (u32, u32, u32) {
    with_lane(|l| l.cta.block)
}

/// `%nctaid.x`.
pub fn grid_dim_x() -> u32 {
    with_lane(|l| l.cta.grid_x)
}

/// `bar.sync 0`.
pub fn sync_threads() {
    with_lane(|l| l.cta.gate.sync())
}

/// `bar.sync id, count`: barrier 0 is the whole CTA's; another id waits for `count` threads
/// (every use of an id with the same count, as the kernels keep it).
pub fn named_barrier_sync(id: u32, count: u32) {
    with_lane(|l| {
        if id == 0 {
            assert_eq!(count, l.cta.threads, "bar.sync 0 is the whole CTA's");
            return l.cta.gate.sync();
        }
        let gate = l
            .cta
            .named
            .lock()
            .unwrap()
            .entry(id)
            .or_insert_with(|| std::sync::Arc::new(Gate::new(count)))
            .clone();
        assert_eq!(gate.n, count, "barrier {id} used with two thread counts");
        gate.sync()
    })
}

/// The dynamic shared memory's first address (0 in this model).
pub fn smem_base() -> u32 {
    0
}

/// `f` of the CTA's shared-memory word at `addr`.
fn with_smem_word<R>(addr: u32, f: impl FnOnce(&std::sync::atomic::AtomicU32) -> R) -> R {
    assert_eq!(addr % 4, 0, "unaligned shared access at {addr}");
    with_lane(|l| f(&l.cta.smem[addr as usize / 4]))
}

/// `ld.shared.u32`.
///
/// # Safety
/// As the device's: `addr` inside the CTA's shared memory.
pub unsafe fn ld_shared_u32(addr: u32) -> u32 {
    with_smem_word(addr, |w| w.load(std::sync::atomic::Ordering::SeqCst))
}

/// `st.shared.u32`.
///
/// # Safety
/// As the device's.
pub unsafe fn st_shared_u32(addr: u32, v: u32) {
    with_smem_word(addr, |w| w.store(v, std::sync::atomic::Ordering::SeqCst))
}

/// `ld.shared.f32`.
///
/// # Safety
/// As the device's.
pub unsafe fn ld_shared_f32(addr: u32) -> f32 {
    f32::from_bits(unsafe { ld_shared_u32(addr) })
}

/// `st.shared.f32`.
///
/// # Safety
/// As the device's.
pub unsafe fn st_shared_f32(addr: u32, v: f32) {
    unsafe { st_shared_u32(addr, v.to_bits()) }
}

/// `ld.shared.v4.u32`.
///
/// # Safety
/// As the device's.
pub unsafe fn ld_shared_v4(addr: u32) -> [u32; 4] {
    std::array::from_fn(|i| unsafe { ld_shared_u32(addr + 4 * i as u32) })
}

/// `st.shared.v4.u32`.
///
/// # Safety
/// As the device's.
pub unsafe fn st_shared_v4(addr: u32, v: [u32; 4]) {
    for (i, w) in v.into_iter().enumerate() {
        unsafe { st_shared_u32(addr + 4 * i as u32, w) }
    }
}

/// `red.shared.max.u32`.
///
/// # Safety
/// As the device's.
pub unsafe fn red_shared_max_u32(addr: u32, v: u32) {
    with_smem_word(addr, |w| {
        w.fetch_max(v, std::sync::atomic::Ordering::SeqCst)
    });
}

/// `ld.global.nc.f32` of a host address.
///
/// # Safety
/// `ptr` is a readable, aligned host address.
pub unsafe fn ld_global_nc_f32(ptr: u64) -> f32 {
    unsafe { std::ptr::read_volatile(ptr as *const f32) }
}

/// `ld.global.nc.v4.u32` of a host address.
///
/// # Safety
/// As [`ld_global_nc_f32`], 16 bytes.
pub unsafe fn ld_global_nc_v4(ptr: u64) -> [u32; 4] {
    unsafe { std::ptr::read_volatile(ptr as *const [u32; 4]) }
}

/// `st.global.f32` to a host address (threads write disjoint words, as on the device).
///
/// # Safety
/// `ptr` is a writable, aligned host address that no other thread touches meanwhile.
pub unsafe fn st_global_f32(ptr: u64, v: f32) {
    unsafe { std::ptr::write_volatile(ptr as *mut f32, v) }
}

/// `st.global.v2.u32`.
///
/// # Safety
/// As [`st_global_f32`], 8 bytes.
pub unsafe fn st_global_v2(ptr: u64, v: [u32; 2]) {
    unsafe { std::ptr::write_volatile(ptr as *mut [u32; 2], v) }
}

/// `st.global.v4.u32`.
///
/// # Safety
/// As [`st_global_f32`], 16 bytes.
pub unsafe fn st_global_v4(ptr: u64, v: [u32; 4]) {
    unsafe { std::ptr::write_volatile(ptr as *mut [u32; 4], v) }
}

/// `st.global.u64`.
///
/// # Safety
/// As [`st_global_f32`], 8 bytes.
pub unsafe fn st_global_u64(ptr: u64, v: u64) {
    unsafe { std::ptr::write_volatile(ptr as *mut u64, v) }
}

/// A move the compiler cannot see through; the identity here.
pub fn opaque_u32(x: u32) -> u32 {
    x
}

/// `cvt.f32.f16`.
pub fn f16_to_f32(x: u16) -> f32 {
    f16::from_bits(x).to_f32()
}

/// `cvt.rn.f16x2.f32` of a bf16 pair (each exact in f32): round to nearest even, ±∞ past f16.
pub fn bf16x2_to_f16x2(x: u32) -> u32 {
    let (lo, hi) = unpack_bf16x2(x);
    pack_f16x2(lo, hi)
}

/// `shfl.sync.bfly` among the lanes of `members`, modelled for the case the kernels use: the
/// members are exactly the warp's threads (a last, partial warp). A partner outside them gives
/// an unspecified value, as on the device (here whatever its slot last held).
pub fn shfl_xor_f32_among(x: f32, mask: u32, members: u32) -> f32 {
    with_lane(|lane| {
        assert_eq!(
            members.count_ones(),
            lane.warp.gate.n,
            "members other than the warp's lanes"
        );
    });
    shfl_xor_f32(x, mask)
}
