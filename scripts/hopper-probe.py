#!/usr/bin/env python3
"""Clock microbenchmarks of the Hopper hardware behind the sm_90a kernels' bounds (diagnostics,
not part of the library; docs/perf-notes.md, fourteenth session).

    python3 scripts/hopper-probe.py build DIR   # here: writes DIR/<probe>.ptx and, with ptxas
                                                # ($PTXAS or the one setup-toolchain.sh
                                                # installs), DIR/<probe>.cubin
    python3 scripts/hopper-probe.py run DIR     # on the GPU machine: loads each cubin through
                                                # the driver API (ctypes, no toolkit needed)

Probes (one CTA each, `%clock` stamps, lane 0 of each warp reports):
  wgmma-issue  cycles until `wgmma.commit_group` returns and until `wait_group 0` completes, for
               batches of 1–16 `m64n128k16.f32.f16.f16` (A from registers: rs, or shared memory:
               ss) and `m64n128k32.s32.s8.s8`, one warpgroup, or two issuing together / 300
               cycles apart.
  pipes        SMSP cycles per warp-instruction of FFMA, FMNMX, I2FP, EX2, F2FP, I2FP beside EX2,
               and the 0x4B400000 integer-to-float trick, with 1, 2, 4 warps per SMSP.
  overlap      warpgroup 0 runs 32 f16 wgmmas while warpgroup 1 runs a softmax-like loop: each
               alone and both together; then loops of EX2 only, FFMA only and FMNMX only.
"""

import ctypes
import os
import subprocess
import sys
from pathlib import Path

HEADER = ".version 8.0\n.target sm_90a\n.address_size 64\n"
SMEM = ".shared .align 1024 .b8 smem_a[16384];\n.shared .align 1024 .b8 smem_b[32768];\n"


def acc(n, reg="%f"):
    return "{" + ", ".join(f"{reg}{i}" for i in range(n)) + "}"


def descriptors(n, lines):
    """`n` A (K-major, 128-byte swizzle) and B (N-major) descriptors into smem_a / smem_b."""
    lines.append("mov.u32 %sa, smem_a; mov.u32 %sb, smem_b; mov.u32 %hi, 0x40000040;")
    for k in range(n):
        kk = k % 8
        lines.append(
            f"add.u32 %lo, %sa, {(kk // 4) * 8192 + (kk % 4) * 32}; shr.u32 %lo, %lo, 4; "
            f"and.b32 %lo, %lo, 0x3FFF; or.b32 %lo, %lo, 0x10000; mov.b64 %da{k}, {{%lo, %hi}};"
        )
        lines.append(
            f"add.u32 %lo, %sb, {kk * 2048}; shr.u32 %lo, %lo, 4; and.b32 %lo, %lo, 0x3FFF; "
            f"or.b32 %lo, %lo, 0x4000000; mov.b64 %db{k}, {{%lo, %hi}};"
        )


def wgmma(kind, k, n):
    if kind == "rs":
        return (f"wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {acc(64)}, "
                f"{{%a0, %a1, %a2, %a3}}, %db{k}, 1, 1, 1, 1;")
    if kind == "ss":
        return (f"wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {acc(64)}, %da{k}, "
                f"%db{k}, 1, 1, 1, 0, 1;")
    return (f"wgmma.mma_async.sync.aligned.m64n128k32.s32.s8.s8 {acc(64, '%s')}, %da{k}, "
            f"%da{(k + 1) % n}, 1;")


PROLOGUE = [
    ".reg .f32 %f<64>, %x<16>, %m<16>, %l<16>, %g<16>; .reg .b32 %s<64>, %a<4>, %i<16>, %b<16>, %h<16>;",
    ".reg .b64 %da<32>, %db<32>;",
    ".reg .u32 %th, %warp, %wg, %lane, %t0, %t1, %t2, %sa, %sb, %lo, %hi, %it, %idx, %dl;",
    ".reg .u64 %out, %o, %off; .reg .pred %p, %pl;",
    "ld.param.u64 %out, [out]; mov.u32 %th, %tid.x; shr.u32 %warp, %th, 5; shr.u32 %wg, %th, 7;",
    "and.b32 %lane, %th, 31;",
]


def entry(name, threads, body):
    return "\n".join([f".visible .entry {name}(.param .u64 out)", f".maxntid {threads}, 1, 1", "{",
                      *PROLOGUE, *body, "ret;", "}"])


def issue_probe(kind, n, threads, delay):
    """Records (issue, wait) per warp for 4 iterations; the last one is reported."""
    b = [f"mov.b32 %a{i}, 0x3c003c00;" for i in range(4)]
    descriptors(n, b)
    b.append("mov.u32 %it, 0;")
    b.append("LOOP:")
    b += [f"mov.b32 %s{i}, 0;" if kind == "i8" else f"mov.f32 %f{i}, 0f00000000;" for i in range(64)]
    b.append("bar.sync 0; mov.u32 %t0, %clock;")
    if delay:
        b.append(f"setp.eq.u32 %p, %wg, 1; @!%p bra NODELAY; DL: mov.u32 %t1, %clock; "
                 f"sub.u32 %t1, %t1, %t0; setp.lt.u32 %pl, %t1, {delay}; @%pl bra DL; NODELAY:")
    b.append("wgmma.fence.sync.aligned;")
    b += [wgmma(kind, k, n) for k in range(n)]
    b.append("wgmma.commit_group.sync.aligned; mov.u32 %t1, %clock;")
    b.append("wgmma.wait_group.sync.aligned 0; mov.u32 %t2, %clock;")
    b.append("sub.u32 %t1, %t1, %t0; sub.u32 %t2, %t2, %t0; setp.eq.u32 %p, %lane, 0;")
    b.append(f"mad.lo.u32 %idx, %it, {threads // 32}, %warp; mul.wide.u32 %off, %idx, 8; "
             "add.u64 %o, %out, %off; @%p st.global.v2.u32 [%o], {%t1, %t2};")
    if kind == "i8":
        b.append("setp.eq.u32 %p, %s0, 12345; @%p st.global.u32 [%out], %s63;")
    else:
        b.append("setp.eq.f32 %p, %f0, 0f4640E400; @%p st.global.f32 [%out], %f63;")
    b.append("add.u32 %it, %it, 1; setp.lt.u32 %p, %it, 4; @%p bra LOOP;")
    return b


PIPE_OPS = {
    "ffma": lambda i: f"fma.rn.f32 %f{i}, %f{i}, 0f3F000001, 0f3F000000;",
    "fmnmx": lambda i: f"max.f32 %f{i}, %f{i}, %f{(i + 3) % 16};",
    "i2f": lambda i: f"cvt.rn.f32.s32 %g{i}, %a{i % 4}; mov.b32 %a{i % 4}, %g{i};"
    if i < 4 else f"cvt.rn.f32.s32 %g{i}, %i{i}; mov.b32 %i{i}, %g{i};",
    "ex2": lambda i: f"ex2.approx.ftz.f32 %f{i}, %f{i};",
    "mix": lambda i: f"cvt.rn.f32.s32 %g{i}, %i{i}; mov.b32 %i{i}, %g{i}; ex2.approx.ftz.f32 %f{i}, %f{i};",
    "f2fp": lambda i: f"cvt.rn.f16x2.f32 %h{i}, %f{i}, %f{(i + 1) % 16}; mov.b32 %f{i}, %h{i};",
    "magic": lambda i: f"add.s32 %i{i}, %i{i}, 0x4B400000; mov.b32 %g{i}, %i{i}; "
    f"fma.rn.f32 %g{i}, %g{i}, 0f3F800000, 0fCB400000; mov.b32 %i{i}, %g{i};",
}


def pipe_probe(op):
    """16 independent chains of `op`, 512 iterations; per warp cycles."""
    b = [f"cvt.rn.f32.u32 %f{i}, %th; add.f32 %f{i}, %f{i}, 0f3F800000; add.u32 %i{i}, %th, {i};"
         for i in range(16)]
    b += [f"add.u32 %a{i}, %th, {i};" for i in range(4)]
    b.append("bar.sync 0; mov.u32 %t0, %clock; mov.u32 %it, 0;")
    b.append("LOOP:")
    b += [PIPE_OPS[op](i) for i in range(16)]
    b.append("add.u32 %it, %it, 1; setp.lt.u32 %p, %it, 512; @%p bra LOOP;")
    b.append("mov.u32 %t1, %clock; sub.u32 %t1, %t1, %t0;")
    b.append("mul.wide.u32 %off, %warp, 8; add.u64 %o, %out, %off; setp.eq.u32 %p, %lane, 0;")
    b.append("@%p st.global.v2.u32 [%o], {%t1, %t1};")
    b.append(" ".join(f"add.f32 %f0, %f0, %f{i}; add.f32 %f0, %f0, %g{i}; add.u32 %i0, %i0, %i{i};"
                      for i in range(1, 16)))
    b.append("setp.eq.f32 %p, %f0, 0f3F812345; @%p st.global.f32 [%out+128], %f0;")
    b.append("setp.eq.u32 %p, %i0, 12345; @%p st.global.u32 [%out+132], %i0;")
    return b


LOOP_BODIES = {
    "softmax": lambda i: f"cvt.rn.f32.s32 %x{i}, %i{i}; fma.rn.f32 %x{i}, %x{i}, 0f3A000000, %m{i}; "
    f"max.f32 %m{i}, %m{i}, %x{i}; ex2.approx.ftz.f32 %x{i}, %x{i}; "
    f"add.f32 %l{i}, %l{i}, %x{i}; add.u32 %i{i}, %i{i}, 3;",
    # 4 EX2 per chain and iteration (1024 per warp): the MUFU alone.
    "mufu": lambda i: " ".join(f"ex2.approx.ftz.f32 %l{i}, %l{i};" for _ in range(4)),
    # 32 FFMA per chain and iteration: the FMA pipe alone.
    "fma": lambda i: " ".join(f"fma.rn.f32 %l{i}, %l{i}, 0f3F000001, 0f3F000000;" for _ in range(32)),
    # 8 FMNMX per chain and iteration: the ALU alone.
    "alu": lambda i: " ".join(f"max.f32 %l{i}, %l{i}, %m{(i + 5) % 16};" for _ in range(8))
    + f" max.f32 %m{i}, %m{i}, %l{i};",
}


def overlap_probe(kind, mode, loop="softmax"):
    b = [f"mov.b32 %a{i}, 0x3c003c00;" for i in range(4)]
    descriptors(8, b)
    b += [f"add.u32 %i{i}, %th, {i * 77}; mov.f32 %m{i}, 0fC2000000; mov.f32 %l{i}, 0f00000000;"
          for i in range(16)]
    b += [f"mov.f32 %f{i}, 0f00000000;" for i in range(64)]
    b.append("bar.sync 0; mov.u32 %t0, %clock; setp.eq.u32 %p, %wg, 1; @%p bra SOFT;")
    if mode in ("mma", "both"):
        b.append("wgmma.fence.sync.aligned;")
        b += [wgmma(kind, k % 8, 8) for k in range(32)]
        b.append("wgmma.commit_group.sync.aligned; wgmma.wait_group.sync.aligned 0;")
    b.append("bra DONE; SOFT:")
    if mode in ("soft", "both"):
        b.append("mov.u32 %it, 0; SL:")
        b += [LOOP_BODIES[loop](i) for i in range(16)]
        b.append("add.u32 %it, %it, 1; setp.lt.u32 %p, %it, 16; @%p bra SL;")
    b.append("DONE: mov.u32 %t1, %clock; sub.u32 %t1, %t1, %t0;")
    b.append("mul.wide.u32 %off, %warp, 8; add.u64 %o, %out, %off; setp.eq.u32 %p, %lane, 0;")
    b.append("@%p st.global.v2.u32 [%o], {%t1, %t1};")
    b.append(" ".join(f"add.f32 %f0, %f0, %f{i};" for i in range(1, 64)) + " "
             + " ".join(f"add.f32 %l0, %l0, %l{i}; add.f32 %l0, %l0, %m{i};" for i in range(1, 16)))
    b.append("setp.eq.f32 %p, %f0, 0f3F812345; @%p st.global.f32 [%out+128], %f0;")
    b.append("setp.eq.f32 %p, %l0, 0f3F812345; @%p st.global.f32 [%out+132], %l0;")
    return b


def probes():
    """{probe: [(entry name, threads, body lines)]}"""
    issue = []
    for kind in ("rs", "ss", "i8"):
        for n in ((1, 2, 4, 8, 16) if kind != "i8" else (1, 4, 8)):
            issue.append((f"{kind}_1wg_{n}", 128, issue_probe(kind, n, 128, 0)))
        issue.append((f"{kind}_2wg_8", 256, issue_probe(kind, 8, 256, 0)))
        issue.append((f"{kind}_2wg_8_delay300", 256, issue_probe(kind, 8, 256, 300)))
    pipes = [(f"{op}_{t}", t, pipe_probe(op)) for op in PIPE_OPS for t in (128, 256, 512)]
    overlap = [(f"{kind}_{mode}", 256, overlap_probe(kind, mode))
               for kind in ("rs", "ss") for mode in ("mma", "soft", "both")]
    overlap += [(f"rs_{loop}_{mode}", 256, overlap_probe("rs", mode, loop))
                for loop in ("mufu", "fma", "alu") for mode in ("soft", "both")]
    return {"wgmma-issue": issue, "pipes": pipes, "overlap": overlap}


def build(out):
    out.mkdir(parents=True, exist_ok=True)
    ptxas = os.environ.get("PTXAS") or str(Path.home() / ".cache/sage-ptx-tools/bin/ptxas")
    for probe, entries in probes().items():
        src = HEADER + SMEM + "\n".join(entry(n, t, b) for n, t, b in entries)
        (out / f"{probe}.ptx").write_text(src)
        (out / f"{probe}.entries").write_text("".join(f"{n} {t}\n" for n, t, _ in entries))
        subprocess.run([ptxas, "-arch", "sm_90a", str(out / f"{probe}.ptx"), "-o",
                        str(out / f"{probe}.cubin")], check=True)
        print(f"hopper-probe: built {out / probe}.cubin ({len(entries)} entries)")


def run(out):
    cu = ctypes.CDLL("libcuda.so.1")

    def ck(r, what):
        if r:
            raise SystemExit(f"hopper-probe: {what}: CUDA error {r}")
    ck(cu.cuInit(0), "cuInit")
    dev = ctypes.c_int()
    ck(cu.cuDeviceGet(ctypes.byref(dev), 0), "cuDeviceGet")
    ctx = ctypes.c_void_p()
    ck(cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "context")
    ck(cu.cuCtxSetCurrent(ctx), "context")
    for probe in probes():
        mod = ctypes.c_void_p()
        ck(cu.cuModuleLoadData(ctypes.byref(mod), (out / f"{probe}.cubin").read_bytes()), probe)
        print(f"== {probe}")
        for line in (out / f"{probe}.entries").read_text().split("\n"):
            if not line:
                continue
            name, threads = line.split()
            threads, warps = int(threads), int(threads) // 32
            f = ctypes.c_void_p()
            ck(cu.cuModuleGetFunction(ctypes.byref(f), mod, name.encode()), name)
            buf = ctypes.c_uint64()
            ck(cu.cuMemAlloc_v2(ctypes.byref(buf), 4096), "alloc")
            ck(cu.cuMemsetD8_v2(buf, 0, 4096), "memset")
            arg = ctypes.c_uint64(buf.value)
            args = (ctypes.c_void_p * 1)(ctypes.cast(ctypes.byref(arg), ctypes.c_void_p))
            for _ in range(3):
                ck(cu.cuLaunchKernel(f, 1, 1, 1, threads, 1, 1, 0, None, args, None), name)
                ck(cu.cuCtxSynchronize(), name)
            host = (ctypes.c_uint32 * 1024)()
            ck(cu.cuMemcpyDtoH_v2(host, buf, 4096), "copy")
            base = 3 * warps if probe == "wgmma-issue" else 0  # the last of 4 iterations
            cells = [(host[2 * (base + w)], host[2 * (base + w) + 1]) for w in range(warps)]
            if probe == "pipes":
                per = max(c[0] for c in cells) / 8192 / (warps // 4)
                print(f"{name:24s} SMSP cycles per warp-instruction {per:6.2f}")
            elif probe == "overlap":
                print(f"{name:24s} end cycles, warps 0-3 (wgmma) / 4-7 (softmax): "
                      + " ".join(str(c[0]) for c in cells))
            else:
                print(f"{name:24s} issue/wait cycles per warp: "
                      + " ".join(f"{a}/{b}" for a, b in cells))
            cu.cuMemFree_v2(buf)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("build", "run"):
        raise SystemExit(__doc__)
    (build if sys.argv[1] == "build" else run)(Path(sys.argv[2]))
