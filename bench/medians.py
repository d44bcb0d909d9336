#!/usr/bin/env python3
"""Prints the median of every criterion benchmark under target/criterion (after cargo bench)."""
import json, pathlib
root = pathlib.Path(__file__).resolve().parent.parent / "target" / "criterion"
for est in sorted(root.glob("**/new/estimates.json")):
    name = str(est.parent.parent.relative_to(root))
    med = json.loads(est.read_text())["median"]["point_estimate"] / 1e6
    print(f"{name:<40} median {med:10.3f} ms")
