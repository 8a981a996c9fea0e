#!/usr/bin/env python3
"""How often the f16 kernels' tiles taken against a lagging max must be retried, by score shape.

The f16 P·V kernels (sm_90a since v27; the portable kernel in v28) take an unmasked tile's
probabilities against the running max as it stands and keep the tile when every lane's part of
every row's tile sum stays at or below a limit; otherwise the warp (or warpgroup) takes the tile
again with the exact softmax, which moves the max. This replays that rule on the CPU for one
warp's 16 query rows over synthetic score shapes (log2 units: independent noise, attention sinks,
recency slopes, decays with distance), forward and reverse tile order, and prints the share of
unmasked tiles (after the first) that retry. No GPU, no dependencies.

    python3 scripts/retry-model.py [--keys 4096] [--limit 16] [--headroom 0] [--tile 64] [--rows 16]
                                   [--cooldown 0]

`--limit`: 16 for the portable kernel's f16 accumulator (cta_k / 4), 16384 for the f32 one and the
sm_90a kernel. `--headroom H`: the exact path sets the max H log2 units above the tile's (the
probabilities of that tile then ≤ 2^-H), which leaves the following tiles more room. `--rows`:
the rows that decide together (16: a portable warp; 64: an sm_90a warpgroup, whose d = 128 tiles
hold 128 keys). `--cooldown C`: after a retry the next unmasked tiles go to the exact softmax
without trying, 1, 3, 7, … tiles after retries in a row (at most C; a tile kept on the fast path
starts over): a guard that bounds the retries on shapes that rise steadily along the keys. The
table then gives the retried and the kept tiles as shares of all unmasked tiles.
"""

import argparse
import math
import random


def retries(score, n_keys, rows, limit, causal, reverse, tile, headroom, cooldown=0):
    """(retried tiles, tiles tried on the fast path, tiles kept on it, unmasked tiles after the
    first) for one warp's `rows`."""
    n_unmasked = (rows[0] + 1) // tile if causal else n_keys // tile
    n_tiles = (rows[-1] + tile) // tile if causal else -(-n_keys // tile)
    order = list(range(n_tiles))[::-1] if reverse else list(range(n_tiles))
    running = {i: -math.inf for i in rows}
    tried = retried = eligible = 0
    wait = backoff = 0
    for step, t in enumerate(order):
        keys = range(t * tile, min((t + 1) * tile, n_keys))
        scores = {i: [(j, score(i, j)) for j in keys if not causal or j <= i] for i in rows}
        if t < n_unmasked and step > 0:
            eligible += 1
        if t < n_unmasked and step > 0 and wait > 0:
            wait -= 1
        elif t < n_unmasked and step > 0:
            tried += 1
            within = True
            for i in rows:
                lanes = [0.0] * 4
                for j, s in scores[i]:
                    x = s - running[i]
                    # Lane l of the quad holds keys 2l and 2l + 1 of every 8-key n-tile.
                    lanes[(j % 8) // 2] += 2.0**x if x < 1000 else math.inf
                within &= max(lanes) <= limit
            if within:
                backoff = 0
                continue
            retried += 1
            # Back off: each retry in a row waits twice as long as the one before, up to
            # `cooldown` tiles; a tile kept on the fast path starts over.
            backoff = min(2 * backoff + 1, cooldown)
            wait = backoff
        for i in rows:
            if scores[i]:
                running[i] = max(running[i], max(s for _, s in scores[i]) + headroom)
    return retried, tried, tried - retried, eligible


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=4096)
    ap.add_argument("--limit", type=float, default=16.0)
    ap.add_argument("--headroom", type=float, default=0.0)
    ap.add_argument("--tile", type=int, default=64)
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cooldown", type=int, default=0)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    noise = {}

    def gauss(i, j, sd):
        if (i, j, sd) not in noise:
            noise[(i, j, sd)] = rng.gauss(0.0, sd)
        return noise[(i, j, sd)]

    # `bench --inputs rotary` at d = 128: the mean score at distance t is Σ_m cos(ω_m t) scaled
    # (8.2 log2 units at 0); the noise of q·k, z·r and r·z (sd 1.44, 1.02, 1.02) together sd 2.04.
    profile = {}

    def rotary(i, j, d=128):
        t = abs(i - j)
        if t not in profile:
            s = sum(math.cos(10000 ** (-2 * m / d) * t) for m in range(d // 2))
            profile[t] = s / math.sqrt(d) * math.log2(math.e)
        return profile[t] + gauss(i, j, 2.04)

    # Scores in log2 units; sd 1.44 is N(0,1) Q and K at any head_dim (q·k/sqrt(d)·log2 e).
    shapes = {
        "bench --inputs rotary d128": rotary,
        # `bench --inputs recency` at d = 128: +0.1 per key along the keys, whatever the query.
        "bench --inputs recency d128": lambda i, j: 0.1 * j + gauss(i, j, 1.44),
        "N(0,1) inputs": lambda i, j: gauss(i, j, 1.44),
        "peaky (sd 5)": lambda i, j: gauss(i, j, 5.0),
        "sink at key 0 (+12)": lambda i, j: (12.0 if j == 0 else 0.0) + gauss(i, j, 1.44),
        "recency -0.02/key": lambda i, j: -0.02 * abs(i - j) + gauss(i, j, 1.44),
        "recency -0.1/key": lambda i, j: -0.1 * abs(i - j) + gauss(i, j, 1.44),
        "decay -2·log2(1+d/16)": lambda i, j: -2 * math.log2(1 + abs(i - j) / 16) + gauss(i, j, 1.44),
        "decay -4·log2(1+d/16)": lambda i, j: -4 * math.log2(1 + abs(i - j) / 16) + gauss(i, j, 1.44),
        "local bump 12·e^(-d/128)": lambda i, j: 12 * math.exp(-abs(i - j) / 128) + gauss(i, j, 1.44),
    }
    print(f"limit {a.limit:g}, headroom {a.headroom:g}, cooldown {a.cooldown}, {a.keys} keys, "
          f"{a.tile}-key tiles; {a.rows} rows deciding together; "
          + ("share of the unmasked tiles retried / kept on the fast path" if a.cooldown
             else "share of the tried tiles retried")
          + ", three row groups")
    for name, f in shapes.items():
        noise.clear()
        cells = []
        for causal in (False, True):
            for reverse in (False, True):
                r = t = kept = n = 0
                for r0 in (a.keys // 4, a.keys // 2, a.keys - a.rows):
                    rows = list(range(r0, r0 + a.rows))
                    dr, dt, dk, dn = retries(
                        f, a.keys, rows, a.limit, causal, reverse, a.tile, a.headroom, a.cooldown
                    )
                    r, t, kept, n = r + dr, t + dt, kept + dk, n + dn
                label = ("causal" if causal else "full") + (" reverse" if reverse else "")
                cell = f"{label} {100 * r / max(t, 1):3.0f}%"
                if a.cooldown:
                    # Retried and kept as shares of every unmasked tile after the first.
                    cell = f"{label} {100 * r / max(n, 1):3.0f}% / {100 * kept / max(n, 1):3.0f}%"
                cells.append(cell)
        print(f"  {name:26s} " + "  ".join(cells))


if __name__ == "__main__":
    main()
