"""The benchmarks' machinery (benchmarks/speed.py, ab_step.py). They measure; nothing is timed here."""
from __future__ import annotations

import importlib.util
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SEED_SCRIPT = REPO.parent / "shared" / "reference" / "seed_vae.py"


def _bench_module(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_main(monkeypatch, capsys, script: str, args: list[str]) -> tuple[int | str, str]:
    """A benchmark's main() on a command line, in this process (a subprocess each costs ~2 s of
    imports): (its exit code, or sys.exit's message; the last line of what it printed to stderr).
    An exception that escapes main() would reach the user as a traceback: it fails the test."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))  # they import their neighbours
    monkeypatch.setattr(sys, "argv", [str(REPO / "benchmarks" / script), *args])
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        _bench_module(script.removesuffix(".py")).main()
    err = capsys.readouterr().err.strip()
    code = e.value.code
    return code, (code if isinstance(code, str) else err.splitlines()[-1] if err else "")


def test_ab_step_fused_loss_prototype_computes_autograds_gradients():
    """benchmarks/README times this step variant against vaelab's: the timing only means
    something if it computes the same step (same eps, fp32 rounding apart)."""
    import torch

    ab = _bench_module("ab_step")
    torch.manual_seed(0)
    init = ab.MLPVAE(256, size="base")
    x = (torch.rand(16, 784) * (torch.rand(16, 784) < 0.2)).float()  # MNIST-like: mostly zeros
    assert ab.gradient_gap("fusedloss", init, x) < 1e-5


def test_seed_loss_is_converted_to_nats_per_example():
    out = ("Epoch [1/2], Loss: 2919.49, seconds: 10.46, samples/s: 5733\n"
           "some other line\n"
           "Epoch [2/2], Loss: 2574.61, seconds: 10.99, samples/s: 5457\n")
    parse = _bench_module("speed").parse_seed_output
    epochs = parse(out, n_train=60000)
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert epochs[0]["samples_per_s"] == 5733 and epochs[1]["seconds"] == 10.99
    # mean of 938 per-batch sums -> per example: x 938 / 60000
    assert epochs[0]["train_loss"] == pytest.approx(2919.49 * 938 / 60000)
    assert parse(out, n_train=256)[0]["train_loss"] == pytest.approx(2919.49 * 4 / 256)


def test_bad_data_root_is_one_line(tmp_path, monkeypatch, capsys):
    # any existing file passes the reference check; the data is looked at before anything runs
    code, line = run_main(monkeypatch, capsys, "speed.py", ["--data-root", str(tmp_path), "--reference", __file__])
    assert code not in (0, None) and line.startswith("speed.py: error: --data-root")


def test_bad_override_is_one_line_before_anything_runs(tiny_mnist, tmp_path):
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "speed.py"), "--data-root", str(tiny_mnist),
                        "--reference", __file__, "trainer.amp=fp16"], capture_output=True, text=True)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert p.stderr.strip() == ("speed.py: error: override 'trainer.amp=fp16': Invalid value 'fp16', "
                                "expected one of [off, bf16] (key 'trainer.amp')")


def test_an_override_of_what_the_benchmark_fixes_is_refused(tmp_path, monkeypatch, capsys):
    """trainer.epochs=2 after --epochs 1 ran vaelab twice as long as the seed script, unremarked."""
    code, line = run_main(monkeypatch, capsys, "speed.py", ["--data-root", str(tmp_path), "--reference", __file__,
                                                            "--epochs", "1", "trainer.epochs=2"])
    assert code not in (0, None) and line == (
        "speed.py: error: override 'trainer.epochs=2': the benchmark sets trainer.epochs itself (the same as the "
        "seed script's; --epochs, --data-root and --device choose them)")


def test_a_reference_that_prints_much_and_no_epoch_line_is_one_error(tiny_mnist, tmp_path):
    """Its output went into a pipe read only at its exit: past 64 KiB the child blocked for good.
    And no epoch line ended, after every round, in a StatisticsError."""
    chatty = tmp_path / "chatty.py"
    chatty.write_text("import sys\nfor i in range(4000):\n    print('x' * 60)\n")  # ~240 KB
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "speed.py"), "--data-root", str(tiny_mnist),
                        "--epochs", "1", "--rounds", "1", "--reference", str(chatty), "--out", str(tmp_path / "r.json")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert p.stderr.startswith(f"speed.py: error: {chatty} printed 0 epoch lines of the seed script's form for "
                               f"--epochs 1; its output ends:")
    assert not (tmp_path / "r.json").exists()


def test_speed_runs_both_programs_and_writes_the_record(tiny_mnist, tmp_path):
    if not SEED_SCRIPT.is_file():
        pytest.skip(f"the seed script is not at {SEED_SCRIPT}")
    out = tmp_path / "speed.json"
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "speed.py"), "--data-root", str(tiny_mnist),
                        "--epochs", "1", "--rounds", "1", "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "ratio" in p.stdout and "losses within 1%" in p.stdout
    rec = json.loads(out.read_text())
    assert [r["impl"] for r in rec["runs"]] == ["reference", "vaelab"]  # A then B
    for r in rec["runs"]:
        (e,) = r["epochs"]
        assert e["samples_per_s"] > 0 and math.isfinite(e["train_loss"]) and r["peak_rss_mib"] > 0
        if r["impl"] == "vaelab":  # (the seed prints its seconds to 0.01 s: too coarse to check here)
            assert e["seconds"] * e["samples_per_s"] == pytest.approx(256)  # the tiny training split
    s = rec["summary"]
    # same model, loss, optimiser and data: the two mean losses agree (0.15% when written)
    assert s["max_abs_rel_loss_diff"] < 0.05
    assert s["ratio"] == pytest.approx(s["vaelab_samples_per_s"] / s["reference_samples_per_s"])
    assert rec["machine"]["device"] == "cpu"
    # each process's whole life, more than its one epoch of training
    for r in rec["runs"]:
        assert r["wall_s"] > r["epochs"][0]["seconds"]
        assert s[f"{r['impl']}_wall_s"] == r["wall_s"]
    assert f"whole process, start to exit (median): reference {s['reference_wall_s']:.1f} s" in p.stdout


def test_speed_record_names_the_commit_it_measured(monkeypatch, tmp_path):
    speed = _bench_module("speed")
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git clone")
    assert speed.commit() in (head.stdout.strip(), head.stdout.strip() + "-dirty")
    monkeypatch.setattr(speed, "REPO", tmp_path)  # not a clone: no commit, and no error
    assert speed.commit() is None


def _speed_record(path: Path, date: str, ref: float, vae: list[float], overrides: list[str] | None = None,
                  rel_diffs: tuple = (0.0022, -0.0011)):
    ratio = statistics.median(vae) / ref
    path.write_text(json.dumps({
        "date": date, "runs": [
            {"impl": "reference", "epochs": [{"samples_per_s": ref}]},
            {"impl": "vaelab", "overrides": overrides or [], "epochs": [{"samples_per_s": v} for v in vae]}],
        "summary": {"reference_samples_per_s": ref, "vaelab_samples_per_s": statistics.median(vae), "ratio": ratio,
                    "loss_per_epoch": [{"rel_diff": d} for d in rel_diffs]}}))


def test_speed_runs_tabulates_records_in_date_order(monkeypatch, capsys, tmp_path):
    # (names whose text order is neither the dates' nor the numbers'; three plain ratios, whose median is
    # not their mean; a loss difference largest below zero: a review's three mutants passed the test before)
    _speed_record(tmp_path / "run2.json", "2026-11-26 10:00:00", 5000, [10000, 11000])
    _speed_record(tmp_path / "run10.json", "2026-11-25 10:00:00", 4000, [12000, 12000], rel_diffs=(0.001, -0.0031))
    _speed_record(tmp_path / "run9.json", "2026-11-28 10:00:00", 5000, [12000, 12000])
    _speed_record(tmp_path / "run1.json", "2026-11-27 10:00:00", 5000, [15000, 16000], ["trainer.amp=bf16"])
    names = ("run2.json", "run10.json", "run9.json", "run1.json")
    monkeypatch.setattr(sys, "argv", ["speed_runs.py", *(str(tmp_path / f) for f in names)])
    _bench_module("speed_runs").main()
    out = capsys.readouterr().out.splitlines()
    rows = [ln for ln in out if ln.startswith("| 2026")]
    assert [r.split(" | ")[1] for r in rows] == ["`run10.json`", "`run2.json`", "`run1.json`", "`run9.json`"]
    assert rows[0].endswith("| 4,000 | 12,000 (12,000-12,000) | 3.00x | 0.31% |")  # (|-0.31%|, the larger)
    assert "`trainer.amp=bf16`" in rows[2]
    assert out[-1] == (  # the bf16 run is left out: the median of 3.00x, 2.10x and 2.40x
        "3 runs with no overrides (the defaults of their day): ratio median 2.40x, range 2.10-3.00x; 1 at 3x or more")


def test_the_readmes_table_of_runs_is_what_speed_runs_prints(monkeypatch, capsys):
    """benchmarks/README.md's table of CPU runs and its summary line: speed_runs.py's output on the
    records in results/ (a record added without the table rewritten, or a number typed, differs)."""
    monkeypatch.setattr(sys, "argv", ["speed_runs.py"])
    monkeypatch.chdir(REPO)
    _bench_module("speed_runs").main()
    printed = capsys.readouterr().out.strip()
    table = printed[printed.index("| date | record | commit |"):]
    assert table in (REPO / "benchmarks" / "README.md").read_text()


def test_floor_splits_the_step_into_its_parts(tmp_path):
    """floor.py's budget: the parts it prints add up to the step, and the 3x target is the
    step time at three times the reference's rate."""
    out = tmp_path / "floor.json"
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "floor.py"), "--rounds", "2", "--block", "2",
                        "--reference-rate", "5000", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    rec = json.loads(out.read_text())
    med = rec["median_ms"]
    parts = ("step", "products", "adam in step", "adam alone", "overhead", "by hand")
    assert all(0 < med[k] for k in parts) and med["adam in step"] < med["step"]
    assert med["rest"] == pytest.approx(med["step"] - med["products"] - med["adam in step"] - med["overhead"])
    assert rec["floor_ms"] == pytest.approx(med["products"] + med["adam in step"] + med["overhead"])
    assert rec["target_step_ms"] == pytest.approx(64 / (3 * 5000) * 1e3)  # 4.27 ms
    assert {k: len(rec["all_ms"][k]) for k in parts} == dict.fromkeys(parts, 2)
    assert "eager floor" in p.stdout and "3x the reference's 5,000 samples/s needs 4.267 ms" in p.stdout
    assert rec["hand_grad_rel_error"] < 1e-5
    hand_x = 64 / med["by hand"] * 1e3 / 5000
    assert f"written by hand without autograd it takes {med['by hand']:.3f} ms, {hand_x:.2f}x" in p.stdout


def test_floor_hand_written_step_has_autograds_gradients(monkeypatch):
    """floor.py times a step with its backward written by hand; the timing only means something
    if it computes the seed loss's gradients (same eps, fp32 rounding apart)."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))  # floor.py imports its neighbours
    floor = _bench_module("floor")
    assert floor.hand_grads_error(batch=16, seed=3) < 1e-5
    with pytest.raises(ValueError, match="one hidden layer only"):
        floor.HandStep(floor.MLPVAE(8, size="large"))


def test_floor_bad_record_is_one_line(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "speed.json"
    bad.write_text("{}")
    code, line = run_main(monkeypatch, capsys, "floor.py", ["--record", str(bad)])
    assert code not in (0, None) and line.startswith(f"floor.py: error: --record {bad}: not a readable speed.py record")


@pytest.mark.parametrize("script,args,start", [
    ("speed.py", ["--data-root", "{tmp}", "--rounds", "0"], "error: --epochs 2 --rounds 0: both must be >= 1"),
    ("floor.py", ["--batch-size", "60000"], "error: --rounds 10 --block 100 --batch-size 60000"),
    ("ab_step.py", ["--data-root", "{tmp}"], "ab_step.py: error: --data-root {tmp}: MNIST not found"),
    ("scaling.py", ["--data-root", "{tmp}", "--memory-epochs", "1"], "error: --epochs 2 --memory-epochs 1"),
    ("scaling.py", ["--data-root", "{tmp}", "--sizes", "huge"], "error: --batch-sizes 64,256,1024,4096 --sizes huge"),
    ("profile_step.py", ["--impl", "bogus"], "error: argument --impl: invalid choice: 'bogus'"),
    ("profile_step.py", ["--batch-size", "60001"], "error: --steps 200 --rows 15 --batch-size 60001"),
    ("gpu_step.py", ["--batch-sizes", "64,big"], "error: --steps 2000 --batch-sizes 64,big: steps >= 1, and batch"),
    ("startup.py", ["--data-root", "{tmp}", "--rounds", "0"], "error: --rounds 0 --epochs 1: both must be >= 1"),
])
def test_bad_benchmark_arguments_are_one_line(tmp_path, monkeypatch, capsys, script, args, start):
    """Each benchmark refuses bad arguments with one line, before any work (and writes nothing)."""
    fill = lambda s: s.replace("{tmp}", str(tmp_path))  # noqa: E731
    code, line = run_main(monkeypatch, capsys, script, [*map(fill, args)])
    assert code not in (0, None) and fill(start) in line
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_gpu_step_without_a_gpu_is_one_line(monkeypatch, capsys):
    assert run_main(monkeypatch, capsys, "gpu_step.py", []) == (2, "gpu_step.py: error: needs a CUDA device")
