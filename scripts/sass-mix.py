#!/usr/bin/env python3
"""Instruction mix of the loops of one kernel in a SASS listing (`cuobjdump -sass`), to compare
the per-tile instruction path of two attention kernels (ours against the official 2.2's, whose
SASS scripts/compare.sh writes with SAGE2_SASS=1).

    python3 scripts/sass-mix.py LISTING[.gz] NAME_SUBSTRING [--top 25]

Takes the first function whose name contains NAME_SUBSTRING, finds its loops (a branch to a lower
address closes one; see `loops` for what is left out) and prints, for each loop of 100
instructions or more, its address range, its instruction count and the most frequent opcodes
(predicates dropped, modifiers kept: `IGMMA.64x64x32.S8.S8`).
"""

import argparse
import collections
import gzip
import re
import sys

FUNCTION = re.compile(r"^\s*Function\s*:\s*(\S+)")
INSTRUCTION = re.compile(r"^\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
TARGET = re.compile(r"\b0x([0-9a-f]+)\b")


def functions(lines):
    """(name, [(address, text)]) per function of the listing."""
    name, body = None, []
    for line in lines:
        m = FUNCTION.match(line)
        if m:
            if name is not None:
                yield name, body
            name, body = m.group(1), []
            continue
        m = INSTRUCTION.match(line)
        if m and name is not None:
            body.append((int(m.group(1), 16), m.group(2)))
    if name is not None:
        yield name, body


def opcode(text):
    words = text.split()
    if words and words[0].startswith("@"):
        words = words[1:]
    return words[0] if words else "?"


def loops(body):
    """(start, end) address ranges closed by backward branches. Left out: the `BRA.U.ANY` spin
    loops, and ranges holding an `EXIT` (the out-of-line retry paths of barrier waits, placed
    after the epilogue, branch back into the loop they came from)."""
    exits = [a for a, t in body if opcode(t) == "EXIT"]
    for address, text in body:
        op = opcode(text)
        if not op.startswith("BRA") or ".U.ANY" in op:
            continue
        m = TARGET.search(text)
        if not m:
            continue
        start = int(m.group(1), 16)
        if start < address and not any(start <= e <= address for e in exits):
            yield start, address


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("listing")
    ap.add_argument("name")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--min", type=int, default=100, help="smallest loop to report")
    args = ap.parse_args()
    opener = gzip.open if args.listing.endswith(".gz") else open
    with opener(args.listing, "rt", errors="replace") as f:
        found = next(((n, b) for n, b in functions(f) if args.name in n), None)
    if found is None:
        sys.exit(f"sass-mix: no function containing {args.name!r} in {args.listing}")
    name, body = found
    print(f"{name}: {len(body)} instructions")
    for start, end in loops(body):
        ops = collections.Counter(opcode(t) for a, t in body if start <= a <= end)
        total = sum(ops.values())
        if total < args.min:
            continue
        print(f"loop {start:#x}..{end:#x}: {total} instructions")
        for op, n in ops.most_common(args.top):
            print(f"  {n:5d} {op}")


if __name__ == "__main__":
    main()
