"""Where a fresh `vaelab-train experiment=seed` process spends its time before and in epoch 1,
with the CUDA warm-up (trainer.cuda_warmup, the default) and without it, alternated:

    python benchmarks/startup.py --data-root ../shared/data --device cuda [--rounds 3] [--out F.json] [OVERRIDES]

Each round runs two fresh processes (warm-up on, then off) of one epoch each. Every process
marks, in seconds from its own start and by thread, when each stage began and ended: the
imports, the warm-up thread's work, the data loading, the wait for the warm-up (the join), the
model and optimizer, the first steps; the parent adds the whole process's wall time and epoch
1's seconds. The question it answers: does the warm-up save its ~0.3 s, or only move it out of
epoch 1's clock (speed.py's rates) into the set-up?
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

T0 = time.perf_counter()
REPO = Path(__file__).resolve().parent.parent
EVENTS: list[tuple[str, str, float]] = []


def mark(name: str) -> None:
    EVENTS.append((name, threading.current_thread().name, round(time.perf_counter() - T0, 4)))


def timed(owner, attr: str, label: str | None = None, wrap_result=None) -> None:
    """Replace owner.attr by a wrapper that marks its start and end."""
    fn = getattr(owner, attr)
    label = label or attr

    @functools.wraps(fn)
    def wrapper(*a, **k):
        mark(f"{label} start")
        try:
            out = fn(*a, **k)
        finally:
            mark(f"{label} end")
        return wrap_result(out) if wrap_result else out
    setattr(owner, attr, wrapper)


def child(out: Path, overrides: list[str]) -> int:
    import vaelab.data as data
    import vaelab.train as tr
    mark("imports done")

    def first_calls(step, n=5):  # marks the first n calls of the training step, per thread
        calls = {}

        def wrapped(*a, **k):
            name = threading.current_thread().name
            calls[name] = calls.get(name, 0) + 1
            if calls[name] <= n:
                mark(f"step {calls[name]} start")
            return step(*a, **k)
        return wrapped

    def finish_marked(finish):
        def wrapped(cancel=False):
            mark("join start")
            finish(cancel)
            mark("join end")
        return wrapped

    timed(tr, "warm_up")
    timed(tr, "start_warm_up", wrap_result=finish_marked)
    timed(tr, "load_data")
    timed(data, "load_mnist_arrays")
    timed(tr, "build_model")
    timed(tr, "build_optimizer")
    timed(tr, "make_step", wrap_result=first_calls)
    from vaelab.train_cli import launch
    rc = launch(overrides)
    mark("launch returned")
    out.write_text(json.dumps({"rc": rc, "events": EVENTS}))
    return rc


def epoch_seconds(run_dir: Path) -> list[float]:
    """Each epoch's training seconds: its images (experiment=seed trains on all 60,000; this
    read 55,000 before, 8% short) over its samples/s."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    metrics = json.loads((run_dir / "metrics.json").read_text())
    n_train = metrics["examples_seen"] // metrics["epochs"]
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [round(n_train / e.value, 4) for e in acc.Scalars("epoch/samples_per_s")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--data-root", type=Path)
    p.add_argument("--device", default="cuda")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--out", type=Path)
    p.add_argument("overrides", nargs="*")
    a = p.parse_args()
    if a.child:
        sys.exit(child(a.child, a.overrides))
    if a.data_root is None:
        p.error("--data-root is required")
    if a.rounds < 1 or a.epochs < 1:
        p.error(f"--rounds {a.rounds} --epochs {a.epochs}: both must be >= 1")
    with tempfile.TemporaryDirectory(prefix="vaelab-startup-") as work:  # (its runs' checkpoints: ~56 MB a round)
        measure(a, Path(work))


def measure(a, work: Path) -> None:
    variants = {"warm-up on": [], "warm-up off": ["trainer.cuda_warmup=false"]}
    results = {k: [] for k in variants}
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for r in range(a.rounds):
        for name, extra in variants.items():
            run_dir = work / f"{'on' if not extra else 'off'}{r}"
            rec = work / f"{run_dir.name}.json"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(rec), "--",
                   "experiment=seed", f"trainer.epochs={a.epochs}", f"data.root={a.data_root.resolve()}",
                   f"device={a.device}", "seed=0", "trainer.final_eval=false", "trainer.progress=false",
                   "data.download=false",
                   f"hydra.run.dir={run_dir}", *extra, *a.overrides]
            t = time.perf_counter()
            proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t
            if proc.returncode:
                print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
                sys.exit(f"{name}: exit status {proc.returncode}")
            got = json.loads(rec.read_text())
            got.update(wall_s=round(wall, 3), epoch_s=epoch_seconds(run_dir))
            results[name].append(got)
            print(f"round {r + 1}  {name:12s} wall {wall:6.2f} s  epoch seconds {got['epoch_s']}")
            for ev, thread, at in got["events"]:
                print(f"    {at:8.3f}  {thread:20s} {ev}")
    print()
    for name, runs in results.items():
        walls = [x["wall_s"] for x in runs]
        e1 = [x["epoch_s"][0] for x in runs]
        print(f"{name:12s} wall {statistics.median(walls):6.2f} s (runs {walls}), "
              f"epoch 1 {statistics.median(e1):.3f} s (runs {e1})")
    if a.out:
        a.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
