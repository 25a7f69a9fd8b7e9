"""Every record `speed.py` wrote, as one Markdown table in date order, and the spread of the ratios.

    python benchmarks/speed_runs.py [RECORD.json ...]   (default: results/speed-cpu-epyc*.json)

One run's ratio says as much about the host's minute as about the code (benchmarks/README.md,
"Speed against the seed script (CPU)"), so the table shows them all, with the overrides each ran
with, and the median and range over those run with no overrides.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def row(path: Path) -> dict:
    rec = json.loads(path.read_text())
    s = rec["summary"]
    vaelab = next(r for r in rec["runs"] if r["impl"] == "vaelab")
    per_epoch = [e["samples_per_s"] for r in rec["runs"] if r["impl"] == "vaelab" for e in r["epochs"]]
    return {"record": path.name, "date": rec["date"], "commit": rec.get("commit") or "",
            "overrides": " ".join(vaelab.get("overrides") or []),
            "reference": s["reference_samples_per_s"], "vaelab": s["vaelab_samples_per_s"],
            "vaelab_range": (min(per_epoch), max(per_epoch)), "ratio": s["ratio"],
            "loss": max(abs(r["rel_diff"]) for r in s["loss_per_epoch"])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("records", nargs="*", type=Path,  # (the default's list in --help was a repr of PosixPaths)
                   help="speed.py JSON records (default: benchmarks/results/speed-cpu-epyc*.json)")
    args = p.parse_args()
    args.records = args.records or sorted(RESULTS.glob("speed-cpu-epyc*.json"))
    if not args.records:
        sys.exit(f"speed_runs.py: error: no records given and none in {RESULTS}")
    rows = sorted((row(f) for f in args.records), key=lambda r: r["date"])
    print("| date | record | commit | overrides | seed script | vaelab (epochs) | ratio | max loss diff |")
    print("|---|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        lo, hi = r["vaelab_range"]
        overrides = f"`{r['overrides']}`" if r["overrides"] else ""
        print(f"| {r['date']} | `{r['record']}` | {r['commit']} | {overrides} "
              f"| {r['reference']:,.0f} | {r['vaelab']:,.0f} ({lo:,.0f}-{hi:,.0f}) | {r['ratio']:.2f}x "
              f"| {100 * r['loss']:.2f}% |")
    plain = [r["ratio"] for r in rows if not r["overrides"]]
    if plain:
        print(f"\n{len(plain)} runs with no overrides (the defaults of their day): "
              f"ratio median {statistics.median(plain):.2f}x, "
              f"range {min(plain):.2f}-{max(plain):.2f}x; {sum(x >= 3 for x in plain)} at 3x or more")


if __name__ == "__main__":
    main()
