#!/usr/bin/env python3
"""Per-launch GPU times from an ncu CSV log (`ncu --csv --log-file F --metrics
gpu__time_duration.sum ...`): one line per kernel launch (ncu's ID, kernel name, grid, block,
microseconds), then per kernel name and grid the launch count and the median.

    python3 scripts/ncu-times.py ncu.csv

The header is found by its columns, not by position: anything else in the file (the profiled
program's own output when ncu's log and stdout are one stream) is skipped.
"""
import csv
import statistics
import sys

UNIT_TO_US = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3,
              "second": 1e6, "s": 1e6}


def launches(path):
    header = None
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if header is None:
                if row and row[0] == "ID" and "Kernel Name" in row and "Metric Value" in row:
                    header = {name: i for i, name in enumerate(row)}
                continue
            if len(row) != len(header) or row[header["Metric Name"]] != "gpu__time_duration.sum":
                continue
            unit = row[header["Metric Unit"]]
            value = float(row[header["Metric Value"]].replace(",", ""))
            yield (row[header["ID"]], row[header["Kernel Name"]], row[header["Grid Size"]],
                   row[header["Block Size"]], value * UNIT_TO_US[unit])
    if header is None:
        sys.exit(f"ncu-times: no ncu CSV header in {path} (did ncu profile any kernel?)")


def main():
    rows = list(launches(sys.argv[1]))
    for launch_id, name, grid, block, us in rows:
        print(f"{launch_id:>5}  {name[:48]:48}  {grid:>16}  {block:>14}  {us:10.1f} us")
    groups = {}
    for _, name, grid, _, us in rows:
        groups.setdefault((name, grid), []).append(us)
    print(f"\n{'kernel':48}  {'grid':>16}  {'launches':>8}  {'median':>10}")
    for (name, grid), times in groups.items():
        print(f"{name[:48]:48}  {grid:>16}  {len(times):>8}  {statistics.median(times):10.1f} us")


if __name__ == "__main__":
    main()
