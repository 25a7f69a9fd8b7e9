"""Side-by-side speed of the seed script and `vaelab-train experiment=seed`.

    python benchmarks/speed.py --data-root ../shared/data --epochs 2 [--device cpu|cuda] [--rounds 2]

Runs the two alternately (A B A B ...) on the same data, device, epochs and seed, each in its
own process, and prints per epoch: training samples/s (images / seconds in the training
loop, the seed's own definition), the ratio of the medians, each process's peak RSS, and the
mean train loss per epoch in nats per example, so a speed-up cannot hide a different
result, and each process's wall time from start to exit (start-up, data loading and
checkpoints included), so that time moved out of the training loop shows where it went. Writes the whole record as JSON (default benchmarks/results/speed-<device>.json).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SEED_LINE = re.compile(r"Epoch \[(\d+)/\d+\], Loss: ([\d.naninf]+), seconds: ([\d.]+), samples/s: (\d+)")


def run_tracked(cmd: list[str], cwd: Path, env: dict | None = None) -> tuple[str, float, float]:
    """Run cmd; return (stdout+stderr, wall seconds, peak RSS in MiB from /proc VmHWM)."""
    t0 = time.perf_counter()
    # The output into a file, read at the end: a pipe nobody reads while polling would fill (64 KiB)
    # and stop the child at its next write, for good.
    with tempfile.TemporaryFile(mode="w+") as log:
        p = subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, **(env or {})})
        peak_kb = 0
        status = Path(f"/proc/{p.pid}/status")
        # Poll the high-water mark while the process lives.
        while p.poll() is None:
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak_kb = max(peak_kb, int(line.split()[1]))
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                pass
            time.sleep(0.05)
        wall = time.perf_counter() - t0
        log.seek(0)
        out = log.read()
    if p.returncode != 0:
        sys.exit(f"speed.py: error: {' '.join(cmd[:4])} ... exited {p.returncode}:\n{out[-2000:]}")
    return out, wall, peak_kb / 1024


def run_reference(args, workdir: Path) -> dict:
    out, wall, rss = run_tracked([sys.executable, str(args.reference), "--data-root", str(args.data_root),
                                  "--epochs", str(args.epochs), "--out", str(workdir / "ref"), "--seed", "0",
                                  "--device", args.device, "--sample-interval", str(10 ** 6)], REPO)
    epochs = parse_seed_output(out, args.n_train)
    if len(epochs) != args.epochs:  # (another script, or one that prints its epochs otherwise)
        sys.exit(f"speed.py: error: {args.reference} printed {len(epochs)} epoch lines of the seed script's form "
                 f"for --epochs {args.epochs}; its output ends:\n{out[-2000:]}")
    return {"impl": "reference", "epochs": epochs, "wall_s": wall, "peak_rss_mib": rss}


def parse_seed_output(out: str, n_train: int, batch: int = 64) -> list[dict]:
    """The seed script's per-epoch lines as records, its loss converted to nats per example."""
    steps = -(-n_train // batch)
    epochs = []
    for m in SEED_LINE.finditer(out):
        # The seed prints the mean over batches of per-batch *sums*; as nats per example:
        loss = float(m.group(2)) * steps / n_train
        epochs.append({"epoch": int(m.group(1)), "samples_per_s": float(m.group(4)),
                       "seconds": float(m.group(3)), "train_loss": loss})
    return epochs


def run_vaelab(args, workdir: Path, i: int) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = workdir / f"vaelab{i}"
    cmd = [sys.executable, "-m", "vaelab.train", "experiment=seed", f"trainer.epochs={args.epochs}",
           f"data.root={args.data_root}", f"device={args.device}", "seed=0", "trainer.final_eval=false",
           "trainer.progress=false", f"hydra.run.dir={run_dir}", *args.overrides]
    _, wall, rss = run_tracked(cmd, REPO)
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    rate = [e.value for e in acc.Scalars("epoch/samples_per_s")]
    loss = [e.value for e in acc.Scalars("epoch/train_loss")]
    epochs = [{"epoch": k + 1, "samples_per_s": r, "seconds": args.n_train / r, "train_loss": l}
              for k, (r, l) in enumerate(zip(rate, loss))]
    if len(epochs) != args.epochs:
        sys.exit(f"speed.py: error: vaelab-train logged {len(epochs)} epochs for --epochs {args.epochs} ({run_dir})")
    return {"impl": "vaelab", "epochs": epochs, "wall_s": wall, "peak_rss_mib": rss, "overrides": args.overrides}


def machine(device: str) -> dict:
    import torch

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "device": device}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def commit() -> str | None:
    """The code the record measured: HEAD, with "-dirty" when tracked files differ from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):  # no git, or not a clone
        return None
    return head + ("-dirty" if dirty else "")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", type=Path, required=True)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--rounds", type=int, default=2, help="A B pairs to run (default 2: A B A B)")
    p.add_argument("--reference", type=Path, default=REPO.parent / "shared" / "reference" / "seed_vae.py")
    p.add_argument("--out", type=Path, default=None, help="JSON record (default benchmarks/results/speed-<device>.json)")
    p.add_argument("overrides", nargs="*", help="extra vaelab-train overrides, e.g. optim.impl=foreach")
    args = p.parse_args()
    if args.epochs < 1 or args.rounds < 1:
        p.error(f"--epochs {args.epochs} --rounds {args.rounds}: both must be >= 1")
    args.data_root = args.data_root.resolve()
    args.reference = args.reference.resolve()  # (both programs run from the repository's root)
    if not args.reference.is_file():
        sys.exit(f"speed.py: error: reference script not found at {args.reference} (use --reference PATH)")
    out_path = args.out or REPO / "benchmarks" / "results" / f"speed-{args.device.replace(':', '')}.json"
    from vaelab.cli_errors import precheck
    from vaelab.config import register_configs
    from vaelab.data import DataError, load_mnist_arrays

    # What makes the comparison a comparison is the benchmark's, not an override's: the same
    # epochs, data, device, seed, batch and model as the seed script's.
    fixed = ("trainer.epochs", "data.root", "data.val_size", "device", "seed", "trainer.batch_size", "experiment",
             "hydra.run.dir")
    for o in args.overrides:
        if o.split("=", 1)[0].lstrip("+~") in fixed:
            sys.exit(f"speed.py: error: override '{o}': the benchmark sets {o.split('=', 1)[0].lstrip('+~')} itself "
                     f"(the same as the seed script's; --epochs, --data-root and --device choose them)")
    # the overrides vaelab-train will get, checked before the first (minutes-long) reference run
    register_configs()
    err = precheck(["experiment=seed", f"device={args.device}", *args.overrides])
    if err:
        sys.exit(f"speed.py: error: {err}")

    try:  # both programs train on the whole training split; its size converts the seed's loss
        args.n_train = len(load_mnist_arrays(args.data_root, download=False)[0])
    except DataError as e:
        sys.exit(f"speed.py: error: --data-root {args.data_root}: {e}")

    m = machine(args.device)
    print(f"machine: {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads, torch {m['torch']}"
          + (f", {m['gpu']}" if "gpu" in m else "") + f"; device {args.device}", flush=True)
    runs = []
    with tempfile.TemporaryDirectory(prefix="vaelab-speed-") as tmp:
        for i in range(args.rounds):
            for fn in (lambda: run_reference(args, Path(tmp)), lambda: run_vaelab(args, Path(tmp), i)):
                r = fn()
                runs.append(r)
                for e in r["epochs"]:
                    print(f"round {i + 1}  {r['impl']:9s}  epoch {e['epoch']}  {e['samples_per_s']:8.0f} samples/s  "
                          f"{e['seconds']:6.2f} s  train loss {e['train_loss']:.4f} nats/ex  "
                          f"peak RSS {r['peak_rss_mib']:.0f} MiB", flush=True)

    def med(impl, key):
        return statistics.median(e[key] for r in runs if r["impl"] == impl for e in r["epochs"])

    def epoch_loss(impl, k):
        return statistics.mean(r["epochs"][k]["train_loss"] for r in runs if r["impl"] == impl)

    ref_rate, vl_rate = med("reference", "samples_per_s"), med("vaelab", "samples_per_s")
    loss_rows = []
    for k in range(args.epochs):
        a, b = epoch_loss("reference", k), epoch_loss("vaelab", k)
        loss_rows.append({"epoch": k + 1, "reference": a, "vaelab": b, "rel_diff": (b - a) / a})
    summary = {
        "reference_samples_per_s": ref_rate, "vaelab_samples_per_s": vl_rate, "ratio": vl_rate / ref_rate,
        "reference_peak_rss_mib": max(r["peak_rss_mib"] for r in runs if r["impl"] == "reference"),
        "vaelab_peak_rss_mib": max(r["peak_rss_mib"] for r in runs if r["impl"] == "vaelab"),
        # each process from start to exit: start-up, data loading, validation and checkpoints included
        "reference_wall_s": statistics.median(r["wall_s"] for r in runs if r["impl"] == "reference"),
        "vaelab_wall_s": statistics.median(r["wall_s"] for r in runs if r["impl"] == "vaelab"),
        "loss_per_epoch": loss_rows,
        "max_abs_rel_loss_diff": max(abs(r["rel_diff"]) for r in loss_rows),
    }
    print()
    print(f"samples/s (median over epochs and rounds): reference {ref_rate:.0f}, vaelab {vl_rate:.0f}, "
          f"ratio {summary['ratio']:.2f}x")
    print(f"peak RSS: reference {summary['reference_peak_rss_mib']:.0f} MiB, "
          f"vaelab {summary['vaelab_peak_rss_mib']:.0f} MiB")
    print(f"whole process, start to exit (median): reference {summary['reference_wall_s']:.1f} s, "
          f"vaelab {summary['vaelab_wall_s']:.1f} s")
    for r in loss_rows:
        print(f"epoch {r['epoch']} mean train loss: reference {r['reference']:.4f}, vaelab {r['vaelab']:.4f} "
              f"nats/example ({100 * r['rel_diff']:+.2f}%)")
    ok_loss = summary["max_abs_rel_loss_diff"] <= 0.01
    print(f"losses within 1%: {'yes' if ok_loss else 'NO'}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    record = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "machine": m,
              "epochs": args.epochs, "rounds": args.rounds, "runs": runs, "summary": summary,
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "commit": commit()}
    out_path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"record: {out_path}")


if __name__ == "__main__":
    main()
