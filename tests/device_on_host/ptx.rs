//! Host stand-ins for the `kernels-gpu/src/ptx.rs` wrappers that the device's pure arithmetic
//! modules call, so that those modules' own source compiles into a host test (`#[path]`). Each one
//! follows the PTX ISA's definition of its instruction, written from the definition rather than
//! from the reference code the tests compare with (the e4m3 conversion is a nearest-value search
//! over the format's codes, not `float8`).
//!
//! Warp-collective instructions (`shfl.sync.bfly`, `vote.sync.all`) need the 32 lanes together:
//! [`run_warp`] runs a closure on 32 threads that meet at a barrier for each one. Shared memory and
//! the tensor-core instructions have no stand-in (`ldmatrix` panics if reached).
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
    let mut best = 0u8;
    for c in 1..0x7f_u8 {
        let (d, d_best) = (
            (f64::from(e4m3_value(c)) - a).abs(),
            (f64::from(e4m3_value(best)) - a).abs(),
        );
        if d < d_best || (d == d_best && c & 1 == 0) {
            best = c;
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

/// The warp the calling thread is a lane of (set by [`run_warp`]).
struct Lane {
    id: u32,
    warp: std::sync::Arc<Warp>,
}

thread_local! {
    static LANE: std::cell::RefCell<Option<Lane>> = const { std::cell::RefCell::new(None) };
}

/// What the 32 lane threads of one modelled warp share: a slot per lane for the value a shuffle
/// offers, and a barrier (with a timeout, so that a lane that never arrives fails the test instead
/// of hanging it).
struct Warp {
    slots: [std::sync::atomic::AtomicU32; 32],
    arrived: std::sync::Mutex<(u32, u64)>,
    turn: std::sync::Condvar,
}

impl Warp {
    fn sync(&self) {
        let mut state = self.arrived.lock().unwrap();
        let generation = state.1;
        state.0 += 1;
        if state.0 == 32 {
            *state = (0, generation + 1);
            self.turn.notify_all();
            return;
        }
        while state.1 == generation {
            let (next, timeout) = self
                .turn
                .wait_timeout(state, std::time::Duration::from_secs(20))
                .unwrap();
            assert!(
                !timeout.timed_out(),
                "a lane never reached the warp's shuffle"
            );
            state = next;
        }
    }
}

/// Runs `lane_fn(lane)` on 32 threads that act as one warp's lanes (each in lockstep at every
/// shuffle) and returns their results in lane order.
pub fn run_warp<R: Send>(lane_fn: impl Fn(u32) -> R + Sync) -> Vec<R> {
    let warp = std::sync::Arc::new(Warp {
        slots: std::array::from_fn(|_| std::sync::atomic::AtomicU32::new(0)),
        arrived: std::sync::Mutex::new((0, 0)),
        turn: std::sync::Condvar::new(),
    });
    std::thread::scope(|scope| {
        let lanes: Vec<_> = (0..32u32)
            .map(|id| {
                let (warp, lane_fn) = (warp.clone(), &lane_fn);
                scope.spawn(move || {
                    LANE.with(|l| *l.borrow_mut() = Some(Lane { id, warp }));
                    lane_fn(id)
                })
            })
            .collect();
        lanes.into_iter().map(|t| t.join().unwrap()).collect()
    })
}

/// `shfl.sync.bfly.b32` over the whole warp: lane `lane ^ mask`'s `x`.
pub fn shfl_xor_u32(x: u32, mask: u32) -> u32 {
    use std::sync::atomic::Ordering::SeqCst;
    LANE.with(|l| {
        let l = l.borrow();
        let lane = l.as_ref().expect("a shuffle outside run_warp");
        lane.warp.slots[lane.id as usize].store(x, SeqCst);
        lane.warp.sync();
        let r = lane.warp.slots[(lane.id ^ mask) as usize].load(SeqCst);
        lane.warp.sync();
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
    LANE.with(|l| {
        let l = l.borrow();
        let lane = l.as_ref().expect("a vote outside run_warp");
        lane.warp.slots[lane.id as usize].store(u32::from(pred), SeqCst);
        lane.warp.sync();
        let all = lane.warp.slots.iter().all(|s| s.load(SeqCst) != 0);
        lane.warp.sync();
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
