"""How training cost grows: seconds per epoch against batch size and model size, and
resident memory over many epochs (a leak would show as growth).

    python benchmarks/scaling.py --data-root ../shared/data [--device cpu] [--epochs 2]
                                 [--batch-sizes 64,256,1024,4096] [--sizes small,base,large] [--out PATH]
    python benchmarks/scaling.py --data-root ../shared/data --memory-epochs 20 [--out PATH]

Each point is one `vaelab-train experiment=seed` process; s/epoch is the training-loop time
of the last epoch (the first includes warm-up). Results: benchmarks/results/scaling-<device>.json
(memory-<device>.json with --memory-epochs) and a Markdown table on stdout for
benchmarks/README.md. The data must be there already (data.download=false).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from speed import machine  # benchmarks/speed.py: the CPU/torch facts every record carries

REPO = Path(__file__).resolve().parents[1]


def run(data_root: Path, device: str, epochs: int, overrides: list[str], tmp: Path) -> dict:
    run_dir = tmp / "_".join(o.replace("=", "-").replace("/", "") for o in overrides)
    cmd = [sys.executable, "-m", "vaelab.train", "experiment=seed", f"trainer.epochs={epochs}",
           f"data.root={data_root}", "data.download=false", f"device={device}", "trainer.final_eval=false",
           "trainer.progress=false",
           "logger.images_every=1000000", f"hydra.run.dir={run_dir}", *overrides]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"scaling.py: error: {' '.join(overrides)} failed:\n{r.stderr[-2000:]}")
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    rate = [e.value for e in acc.Scalars("epoch/samples_per_s")]
    m = json.loads((run_dir / "metrics.json").read_text())
    n_train = m["examples_seen"] / m["epochs"]  # the training split's size, not assumed 60,000
    return {"overrides": overrides, "samples_per_s": rate, "s_per_epoch": n_train / rate[-1],
            "rss_mib": [e.value for e in acc.Scalars("epoch/rss_mib")],
            "train_loss": [e.value for e in acc.Scalars("epoch/train_loss")]}


def main() -> None:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--data-root", type=Path, required=True, help="a folder holding MNIST/raw/")
    p.add_argument("--device", default="cpu", help="as vaelab-train's device")
    p.add_argument("--epochs", type=int, default=2, help="per point; the last epoch is timed")
    p.add_argument("--batch-sizes", default="64,256,1024,4096", help="comma-separated")
    p.add_argument("--sizes", default="small,base,large", help="model.size values, comma-separated")
    p.add_argument("--memory-epochs", type=int, default=0,
                   help="instead of the table: RSS over this many epochs (>= 2: growth is counted from epoch 2)")
    p.add_argument("--out", type=Path, help="the JSON record (default benchmarks/results/scaling-<device>.json, "
                                            "memory-<device>.json with --memory-epochs)")
    args = p.parse_args()
    if args.epochs < 1 or args.memory_epochs < 0 or args.memory_epochs == 1:
        p.error(f"--epochs {args.epochs} --memory-epochs {args.memory_epochs}: --epochs must be >= 1, "
                "--memory-epochs 0 (off) or >= 2")
    try:
        bad = [b for b in args.batch_sizes.split(",") if int(b) < 1]
    except ValueError:
        bad = [args.batch_sizes]
    sizes = {"small": "[256]", "base": "[512]", "large": "[1024,512]"}
    if bad or not set(args.sizes.split(",")) <= set(sizes):
        p.error(f"--batch-sizes {args.batch_sizes} --sizes {args.sizes}: batch sizes must be integers >= 1, "
                f"sizes among {', '.join(sizes)}")
    root = args.data_root.resolve()
    kind = "memory" if args.memory_epochs else "scaling"
    out = args.out or REPO / "benchmarks" / "results" / f"{kind}-{args.device.replace(':', '')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vaelab-scaling-") as t:
        tmp = Path(t)
        if args.memory_epochs:
            r = run(root, args.device, args.memory_epochs, ["trainer.batch_size=256"], tmp)
            print("| epoch | RSS (MiB) | train loss |\n|---:|---:|---:|")
            for i, (m, l) in enumerate(zip(r["rss_mib"], r["train_loss"])):
                print(f"| {i + 1} | {m:.0f} | {l:.2f} |")
            out.write_text(json.dumps({"machine": machine(args.device), **r}, indent=2) + "\n")
            print(f"RSS growth epoch 2 -> {len(r['rss_mib'])}: {r['rss_mib'][-1] - r['rss_mib'][1]:+.1f} MiB")
            return
        rows = []
        print("| batch size | model | hidden | s/epoch | samples/s |\n|---:|---|---|---:|---:|")
        for size in args.sizes.split(","):
            for bs in args.batch_sizes.split(","):
                r = run(root, args.device, args.epochs, [f"trainer.batch_size={bs}", f"model.size={size}"], tmp)
                rows.append(r)
                print(f"| {bs} | {size} | {sizes[size]} | {r['s_per_epoch']:.2f} | {r['samples_per_s'][-1]:.0f} |",
                      flush=True)
        out.write_text(json.dumps({"machine": machine(args.device), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
