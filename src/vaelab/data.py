"""MNIST as uint8 tensors on the training device, drawn as shuffled index batches.

The seed script spent most of its time in a DataLoader turning each PIL image into a tensor
one by one. Here the whole split lives on the device as one (N, 784) uint8 tensor (47 MB for
60k images) and a batch is `images[perm[i:i + B]]`, converted to float in one kernel.
"""
from __future__ import annotations

import gzip
import logging
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    import torch

# torch is imported where it is used: `vaelab eval` names a mistyped run folder (DataError is
# one of its errors) without waiting ~2 s for it.

log = logging.getLogger(__name__)

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
IMAGE_SHAPE = (1, 28, 28)


class DataError(RuntimeError):
    """Data that cannot be found or read. Its message is one line for the user."""


@dataclass
class Split:
    images: torch.Tensor  # (N, C*H*W) uint8 on the device, or {0,1} uint8 when binarized
    labels: torch.Tensor  # (N,) int64 on the device
    image_shape: tuple = IMAGE_SHAPE

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def dim(self) -> int:
        return self.images.shape[1]


@dataclass
class MNISTData:
    train: Split
    val: Split
    test: Split
    binarize: str = "none"  # how `to_float` treats training batches
    val_is_test: bool = False  # data.val_size=0: "val" metrics come from the test split


def _raw_dir(root: Path) -> Path:
    return root / "MNIST" / "raw"


def _have_files(root: Path) -> bool:
    raw = _raw_dir(root)
    return all((raw / f).exists() or (raw / f"{f}.gz").exists() for f in MNIST_FILES)


def _unpack(raw: Path) -> None:
    """torchvision's MNIST reads only the unpacked files (its download unpacks each .gz next to
    itself): unpack a folder that holds only the .gz files, each into a temporary file renamed
    into place, so that a Ctrl-C or a second process (a joblib sweep) never leaves half a file."""
    from vaelab.checkpoint import write_atomic

    for f in MNIST_FILES:
        if (raw / f).exists():
            continue
        src = raw / f"{f}.gz"
        try:
            with gzip.open(src, "rb") as packed:
                write_atomic(raw / f, lambda out: shutil.copyfileobj(packed, out))
        except (EOFError, gzip.BadGzipFile, zlib.error) as e:  # BadGzipFile is an OSError: first
            raise DataError(f"{src}: not a complete gzip file ({e}); replace it with a good copy") from None
        except OSError as e:  # a read-only folder, a full disk
            raise DataError(f"{src}: cannot unpack it next to itself ({e.strerror or e}); gunzip the four "
                            f"files into a writable folder's MNIST/raw/ and point data.root there") from None
        log.info("unpacked %s (torchvision reads the unpacked file)", src)


HOW = "set data.root=DIR or VAELAB_DATA=DIR"


def fetch_mnist(root: str | Path, download: bool = True, how: str = HOW) -> None:
    """Make sure MNIST's four files are under root/MNIST/raw, downloading them if allowed;
    else a DataError. `how`: what the message tells the user to do to point at the data."""
    root = Path(root).expanduser()
    if _have_files(root):
        return
    from torchvision.datasets import MNIST

    if download:
        chain = [_raw_dir(root), *_raw_dir(root).parents]
        first_new = next((p for p in chain if not p.exists() and p.parent.exists()), None)  # torchvision may make it
        try:
            MNIST(str(root), train=True, download=True)
            MNIST(str(root), train=False, download=True)
        except Exception as e:  # no network, a mirror down, a read-only folder, ...
            log.debug("MNIST download failed: %r", e)
            if first_new is not None and first_new.is_dir() and not any(f.is_file() for f in first_new.rglob("*")):
                shutil.rmtree(first_new, ignore_errors=True)  # a failed download leaves no empty folders behind
    if not _have_files(root):
        raise DataError(
            f"MNIST not found in {_raw_dir(root).resolve()} (download {'failed' if download else 'disabled'}): "
            f"expected the four files {', '.join(MNIST_FILES)} (optionally .gz); "
            f"{how} to a folder holding MNIST/raw/")


def load_mnist_arrays(root: str | Path, download: bool = True, how: str = HOW):
    """((60000, 28, 28) uint8, (60000,) int64, (10000, 28, 28) uint8, (10000,) int64) via torchvision."""
    from torchvision.datasets import MNIST

    fetch_mnist(root, download, how)
    root = Path(root).expanduser()
    _unpack(_raw_dir(root))
    try:
        tr = MNIST(str(root), train=True, download=False)
        te = MNIST(str(root), train=False, download=False)
    except Exception as e:
        raise DataError(f"could not read MNIST from {_raw_dir(root).resolve()}: {e}") from e
    return tr.data, tr.targets, te.data, te.targets


def _binarize_once(images: torch.Tensor, seed: int) -> torch.Tensor:
    """One fixed Bernoulli draw with p = pixel / 255 (static binarization)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    p = images.float().div_(255)
    return torch.bernoulli(p, generator=g).to(torch.uint8).mul_(255)


def load_data(root: str | Path, device: torch.device, val_size: int = 5000, split_seed: int = 0,
              binarize: str = "none", download: bool = True, **how) -> MNISTData:
    import torch

    x_train, y_train, x_test, y_test = load_mnist_arrays(root, download, **how)
    n = x_train.shape[0]
    if not 0 <= val_size < n:
        raise DataError(f"data.val_size={val_size}: must be in [0, {n - 1}] for a training set of {n} images")
    x_train, x_test = x_train.reshape(n, -1), x_test.reshape(x_test.shape[0], -1)
    # Static: one draw per split. Dynamic: training batches are redrawn each step (see
    # to_float), but val/test are drawn once so evaluation numbers are repeatable. The draws
    # are part of the dataset, fixed by data.split_seed, not the run's seed: runs with
    # different seeds are scored on the same binarized test images.
    if binarize in ("static", "dynamic"):
        x_test = _binarize_once(x_test, split_seed + 2)
        if binarize == "static":
            x_train = _binarize_once(x_train, split_seed + 1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    tr_idx, va_idx = perm[val_size:], perm[:val_size]
    x_val = x_train[va_idx]
    if binarize == "dynamic":
        x_val = _binarize_once(x_val, split_seed + 3)

    def split(x, y):
        return Split(x.contiguous().to(device), y.to(device))

    val_is_test = val_size == 0
    train = split(x_train[tr_idx], y_train[tr_idx])
    test = split(x_test, y_test)
    val = test if val_is_test else split(x_val, y_train[va_idx])
    return MNISTData(train, val, test, binarize=binarize, val_is_test=val_is_test)


def to_float(batch_u8: torch.Tensor, binarize: str = "none", generator: torch.Generator | None = None
             ) -> torch.Tensor:
    """uint8 (B, D) -> float32 in [0, 1]; with dynamic binarization a fresh Bernoulli draw."""
    x = batch_u8.float().div_(255.0)
    if binarize == "dynamic":
        import torch

        x = torch.bernoulli(x, generator=generator)
    return x


def batch_indices(n: int, batch_size: int, generator: torch.Generator, device: torch.device,
                  start: int = 0, perm: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
    """Shuffled index batches of one epoch; the last, smaller batch is kept (as the seed's
    DataLoader does). `perm`/`start` let a resumed run finish an interrupted epoch."""
    if perm is None:
        import torch

        perm = torch.randperm(n, generator=generator)
    perm = perm.to(device)
    for i in range(start, n, batch_size):
        yield perm[i:i + batch_size]
