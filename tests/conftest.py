"""Shared fixtures: tiny MNIST-format data written by the tests, and the real configs built
with Hydra's compose API (the same files and schema vaelab-train uses)."""
from __future__ import annotations

import contextlib
import os
import signal
import struct
from pathlib import Path

import numpy as np
import pytest

from vaelab.config import compose_config

REAL_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write an IDX file (the MNIST format): magic (0, 0, dtype 0x08=uint8, ndim), dims, data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack(">BBBB", 0, 0, 0x08, array.ndim))
        for d in array.shape:
            f.write(struct.pack(">I", d))
        f.write(array.astype(np.uint8).tobytes())


def make_tiny_mnist(root: Path, n_train: int = 256, n_test: int = 64, seed: int = 0) -> Path:
    """Digit-like blobs: each label lights a different block of a 28x28 image, plus noise."""
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, size=n)
        imgs = rng.integers(0, 40, size=(n, 28, 28))
        for i, y in enumerate(labels):
            r, c = divmod(int(y), 5)
            imgs[i, 4 + 10 * r: 14 + 10 * r, 2 + 5 * c: 7 + 5 * c] = 255
        write_idx(raw / f"{prefix}-images-idx3-ubyte", imgs)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture(scope="session")
def tiny_mnist(tmp_path_factory) -> Path:
    return make_tiny_mnist(tmp_path_factory.mktemp("data"))


# Overrides that make any experiment run in about a second on CPU.
FAST = ["device=cpu", "data.val_size=64", "trainer.epochs=2", "trainer.batch_size=32", "trainer.log_every=2",
        "trainer.progress=false", "trainer.final_eval_k=4", "trainer.eval_batch_size=64",
        "logger.histograms=false"]  # (the KL charts: ~50 ms an epoch; test_train.py's first test draws them)


def compose_cfg(overrides: list[str] | None = None):
    return compose_config(overrides or [])


@pytest.fixture
def make_cfg(tiny_mnist):
    """make_cfg(['latent_size=4', ...]) -> a composed, typed config on the tiny data."""
    def _make(overrides=None, fast: bool = True):
        return compose_cfg([f"data.root={tiny_mnist}", *(FAST if fast else []), *(overrides or [])])
    return _make


@pytest.fixture(autouse=True)
def _signal_handlers_as_they_were():
    """Each test starts with the handlers a terminal's foreground job has (the suite may run as a
    script's background job, which starts ignoring Ctrl-C, or under nohup, and a run keeps what
    it started ignoring), and ends with those it had: a command's way out after a stop ignores a
    late Ctrl-C, SIGTERM or hang-up (its process is leaving)."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


@pytest.fixture(autouse=True)
def _no_accelerator_env(monkeypatch):
    monkeypatch.delenv("VAELAB_DATA", raising=False)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    yield


@contextlib.contextmanager
def signal_at_step(monkeypatch, step: int, sig: int = signal.SIGINT):
    """Within the block, train() in this process gets `sig` (Ctrl-C by default) as step `step`
    (0-based) begins: beta_at is called once per step, first thing, so the signal lands
    mid-step; train() finishes that step, saves last.pt and raises Interrupted."""
    import vaelab.train as train_mod

    real = train_mod.beta_at

    def beta_at(s, *args):
        if s == step:
            os.kill(os.getpid(), sig)
        return real(s, *args)

    monkeypatch.setattr(train_mod, "beta_at", beta_at)
    try:
        yield
    finally:
        monkeypatch.setattr(train_mod, "beta_at", real)


def pytest_configure(config):
    # Under pytest-xdist each worker shares the 2 cores with the others: one torch thread per
    # worker, and one for the vaelab-train processes the tests start (they inherit os.environ).
    # Two OpenMP threads on a core another process is using wait on each other (3-30x slower).
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)
