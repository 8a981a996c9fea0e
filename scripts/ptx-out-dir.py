#!/usr/bin/env python3
"""Prints the OUT_DIR of the sageattention build script (where build.rs writes the PTX modules)
from cargo's JSON messages (`--message-format=json…`): the first one found in the given files,
read in order; nothing when none has it. Used by device-bundle.sh and prebuilt-ptx.sh."""

import json
import sys

for path in sys.argv[1:]:
    for line in open(path):
        try:
            m = json.loads(line)
        except ValueError:
            continue
        if m.get("reason") == "build-script-executed" and "sageattention" in m.get("package_id", ""):
            print(m["out_dir"])
            sys.exit(0)
