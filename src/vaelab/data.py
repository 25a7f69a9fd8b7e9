"""MNIST as uint8 tensors on the training device, drawn as shuffled index batches.

The seed script spent most of its time in a DataLoader turning each PIL image into a tensor
one by one. Here the whole split lives on the device as one (N, 784) uint8 tensor (47 MB for
60k images) and a batch is `images[perm[i:i + B]]`, converted to float in one kernel.
"""
from __future__ import annotations

import gzip
import hashlib
import logging
import math
import os
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

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
    images: torch.Tensor  # (N, C*H*W) uint8 on the device; {0, 255} when binarized (to_float: /255)
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
    # A hash of every image and label of the three splits as the run sees them (after the split
    # and any fixed binarization): recorded in checkpoints, metrics.json and eval.json, so that
    # `vaelab resume` and `vaelab reproduce` tell other data from a change of numbers.
    digest: str = ""
    split_seed: int | None = None  # data.split_seed it was loaded with (None: made otherwise, e.g. a test's)


def _raw_dir(root: Path) -> Path:
    return root / "MNIST" / "raw"


def _have_files(root: Path) -> bool:
    raw = _raw_dir(root)
    try:
        return all((raw / f).exists() or (raw / f"{f}.gz").exists() for f in MNIST_FILES)
    except PermissionError as e:  # a folder on the way that one may not look into (a traceback; review)
        shut = _shut((root, root / "MNIST", raw))
        raise DataError(f"{shut}: cannot look into it ({e.strerror or e}); make it readable, or give data.root a "
                        f"folder you can read") from None


def _shut(folders: tuple[Path, ...]) -> Path:
    """The first of these folders (each inside the one before) that one may not look into: its
    names cannot be looked up (no search permission), or it cannot be looked at itself (its
    parent's); the last if none is found so."""
    for d in folders:
        try:
            if d.is_dir() and not os.access(d, os.X_OK):
                return d
        except OSError:
            return d.parent
    return folders[-1]


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
                write_atomic(raw / f, lambda out: _copy(packed, src, out))
        except gzip.BadGzipFile as e:  # (an OSError: first)
            raise DataError(f"{src}: not a gzip file ({e}); replace it with a good copy") from None
        except (EOFError, zlib.error) as e:
            raise DataError(f"{src}: not a complete gzip file ({e}); replace it with a good copy") from None
        except OSError as e:
            if e.filename is not None and Path(e.filename) == src:  # the .gz itself: permissions
                raise DataError(f"{src}: cannot read it ({e.strerror or e})") from None
            # the folder: read-only, or a full disk
            raise DataError(f"{src}: cannot unpack it next to itself ({e.strerror or e}); gunzip the four "
                            f"files into a writable folder's MNIST/raw/ and point data.root there") from None
        log.info("unpacked %s (torchvision reads the unpacked file)", src)
        _UNPACKED.add(raw / f)


def _copy(packed, src: Path, out) -> None:
    """shutil.copyfileobj, with a read error named as the .gz's: write_atomic names the file it
    writes in an OSError that names none, and a disk error reading the .gz then read as the
    folder being unwritable."""
    while True:
        try:
            chunk = packed.read(1 << 20)
        except OSError as e:
            if e.filename is None and e.errno is not None:  # (not BadGzipFile: no errno, and its own words)
                e.filename = str(src)
            raise
        if not chunk:
            return
        out.write(chunk)


HOW = "set data.root=DIR or VAELAB_DATA=DIR"


def fetch_mnist(root: str | Path, download: bool = True, how: str = HOW) -> None:
    """Make sure MNIST's four files are under root/MNIST/raw, downloading them if allowed, and
    that those already unpacked are whole IDX files of 28 x 28 images; else a DataError. `how`:
    what the message tells the user to do to point at the data."""
    root = _expanded(root)
    if _have_files(root):
        if all((_raw_dir(root) / f).exists() for f in MNIST_FILES):  # (.gz files: checked once unpacked)
            _check_files(_raw_dir(root))
        return
    if download:
        from torchvision.datasets import MNIST  # (torch with it, ~1.5 s: not for a refusal)

        chain = [_raw_dir(root), *_raw_dir(root).parents]
        first_new = next((p for p in chain if not p.exists() and p.parent.exists()), None)  # torchvision may make it
        why = "failed"
        try:
            MNIST(str(root), train=True, download=True)
            MNIST(str(root), train=False, download=True)
        except Exception as e:  # no network, a mirror down, a read-only folder, ...
            log.debug("MNIST download failed: %r", e)
            why = f"failed: {_short(e, line=-1)}"  # (torchvision's last line: what the last mirror tried said)
            if first_new is not None and first_new.is_dir() and not any(f.is_file() for f in first_new.rglob("*")):
                shutil.rmtree(first_new, ignore_errors=True)  # a failed download leaves no empty folders behind
    if not _have_files(root):
        raw = _raw_dir(root)
        missing = [f for f in MNIST_FILES if not (raw / f).exists() and not (raw / f"{f}.gz").exists()]
        what = (f"expected the four files {', '.join(MNIST_FILES)} (optionally .gz)" if len(missing) == len(MNIST_FILES)
                else f"{', '.join(missing)} (or .gz) missing beside the others")
        # data.root given as MNIST/raw/ itself, or MNIST/: the folder it should be is above it
        right = next((c for c in (root.parent, root.parent.parent) if _have_files(c)
                      and root.resolve() in ((c / "MNIST").resolve(), _raw_dir(c).resolve())), None)
        named = "--data-root" if "--data-root" in how else \
            "data.root (or VAELAB_DATA)" if "VAELAB_DATA" in how else "data.root"  # (what the command was given)
        # the four files in data.root itself, or in data.root/raw/: they go two folders down (review)
        flat = next((d for d in (root, root / "raw") if _holds_the_files(d)), None)
        hint = (f"; {named} is the folder that holds MNIST/raw/, here {right.resolve()}" if right is not None
                else f"; the four files are in {flat.resolve()}: move them into {raw.resolve()}" if flat is not None
                else f"; {how} to a folder holding MNIST/raw/")
        raise DataError(f"MNIST not found in {raw.resolve()} (download {why if download else 'disabled'}): "
                        f"{what}{hint}")


def _holds_the_files(folder: Path) -> bool:
    """Whether the four files (or their .gz) are in this folder itself; False for one that cannot be read."""
    try:
        return folder.is_dir() and all((folder / f).is_file() or (folder / f"{f}.gz").is_file() for f in MNIST_FILES)
    except OSError:
        return False


def _short(e: Exception, line: int = 0) -> str:
    """An exception as a few words for a one-line message: one of its lines (the first), at most
    120 characters."""
    text = str(e).strip().splitlines()[line] if str(e).strip() else type(e).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def _idx_dims(path: Path, ndim: int) -> tuple[int, ...]:
    """The sizes an IDX file of unsigned bytes declares (LeCun's format: the magic number
    0x0000080N for N dimensions, N big-endian int32 sizes, then the bytes), after checking the
    magic number and that the file holds exactly that many bytes. torchvision reads the files
    without these checks: a damaged one gave a reshape error or an empty AssertionError."""
    try:
        with open(path, "rb") as f:
            head = f.read(4 + 4 * ndim)
        size = path.stat().st_size
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror or e})") from None
    expected = 0x800 | ndim
    if len(head) < 4 + 4 * ndim:
        raise DataError(f"{path}: {size} bytes, too short for an IDX header; {_replace(path)}")
    magic, *dims = struct.unpack(f">{1 + ndim}I", head)
    if magic != expected:
        raise DataError(f"{path}: not an IDX file of {'images' if ndim == 3 else 'labels'} (magic number "
                        f"0x{magic:08x}, expected 0x{expected:08x}); {_replace(path)}")
    want = len(head) + math.prod(dims)
    if size != want:
        raise DataError(f"{path}: {size} bytes, but its header ({' x '.join(map(str, dims))}) needs {want}: "
                        f"{'truncated' if size < want else 'extra bytes at the end'}; {_replace(path)}")
    return tuple(dims)


def _expanded(root: str | Path) -> Path:
    """`root` with a leading ~ or ~user expanded; a DataError with one line for a user this machine
    does not have (pathlib's RuntimeError, "Could not determine home directory", was a traceback)."""
    try:
        return Path(root).expanduser()
    except RuntimeError:
        user = str(root)[1:].split("/", 1)[0]
        raise DataError(f"{root}: no user {user!r} on this machine, whose home ~{user} would be; write the folder "
                        f"out") from None


_UNPACKED: set[Path] = set()  # the files _unpack made in this process


def _replace(path: Path) -> str:
    """What to do about a damaged IDX file: replace it; or, with a .gz beside it (that it may have
    been unpacked from, by vaelab or torchvision), delete it, and the .gz is unpacked again; or,
    unpacked from that .gz just now, replace the .gz (deleting the file only unpacked it again; review)."""
    gz = path.with_name(f"{path.name}.gz")
    if path in _UNPACKED:
        return f"it was unpacked from {gz.name} just now: replace that with a good copy, and delete this file"
    return (f"delete it, and {gz.name} beside it is unpacked again (replace that with a good copy if it is damaged "
            f"too)") if gz.exists() else "replace it with a good copy"


def _check_files(raw: Path) -> None:
    """Each split's images are 28 x 28 and as many as its labels: one line naming the file, not
    a traceback later (a count mismatch failed at the first batch, other image sizes at the
    first picture or in the evaluation)."""
    for images, labels in (MNIST_FILES[:2], MNIST_FILES[2:]):
        n, *hw = _idx_dims(raw / images, 3)
        (m,) = _idx_dims(raw / labels, 1)
        if tuple(hw) != IMAGE_SHAPE[1:]:
            raise DataError(f"{raw / images}: images of {hw[0]} x {hw[1]} pixels; MNIST's are "
                            f"{IMAGE_SHAPE[1]} x {IMAGE_SHAPE[2]}")
        if n != m:
            raise DataError(f"{raw / labels}: {m} labels for the {n} images of {images}; the two files must come "
                            f"from the same copy of MNIST")
        if n == 0:  # (torchvision's words for it named no file: "offset (16 bytes) must be non-negative ...")
            raise DataError(f"{raw / images}: holds no images; {_replace(raw / images)}")


def mnist_train_size(root: str | Path) -> int | None:
    """The number of training images MNIST's files under root declare (their IDX header, unpacked
    or .gz), without reading the images; None where there are no files."""
    raw = _raw_dir(_expanded(root))
    images = raw / MNIST_FILES[0]
    if images.exists():
        return _idx_dims(images, 3)[0]
    try:
        with gzip.open(raw / f"{MNIST_FILES[0]}.gz", "rb") as f:
            head = f.read(8)
    except FileNotFoundError:
        return None
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{raw / MNIST_FILES[0]}.gz: cannot read it ({e}); replace it with a good copy") from None
    return struct.unpack(">2I", head)[1] if len(head) == 8 else None


def load_mnist_arrays(root: str | Path, download: bool = True, how: str = HOW):
    """((60000, 28, 28) uint8, (60000,) int64, (10000, 28, 28) uint8, (10000,) int64) via torchvision."""
    from torchvision.datasets import MNIST

    fetch_mnist(root, download, how)
    root = _expanded(root)
    _unpack(_raw_dir(root))
    _check_files(_raw_dir(root))
    try:
        tr = MNIST(str(root), train=True, download=False)
        te = MNIST(str(root), train=False, download=False)
    except Exception as e:
        raise DataError(f"could not read MNIST from {_raw_dir(root).resolve()}: {_short(e)}") from e
    for split, name in ((tr, MNIST_FILES[1]), (te, MNIST_FILES[3])):
        if len(split.targets) and int(split.targets.max()) > 9:
            raise DataError(f"{_raw_dir(root).resolve() / name}: label {int(split.targets.max())}; MNIST's are 0-9")
    return tr.data, tr.targets, te.data, te.targets


def _binarize_once(images: torch.Tensor, seed: int) -> torch.Tensor:
    """One fixed Bernoulli draw with p = pixel / 255 (static binarization)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    p = images.float().div_(255)
    return torch.bernoulli(p, generator=g).to(torch.uint8).mul_(255)


def val_size_error(val_size: int, n: int, root, saved: bool = False, given: bool = False) -> str | None:
    """Why data.val_size cannot split a training set of n images (it leaves none to train on).
    saved: val_size is a saved run's, which the user did not choose now: the data is the suspect;
    given: the user named that data with --data-root, not data.root."""
    if 0 <= val_size < n:
        return None
    if saved:
        return (f"{'--data-root ' if given else 'data.root='}{root}: its training split has {n} images, too few for "
                f"the run's data.val_size="
                f"{val_size} (set when it trained): is this the data the run trained on?")
    return f"data.val_size={val_size}: must be in [0, {n - 1}] for a training set of {n} images (data.root={root})"


def load_data(root: str | Path, device: torch.device, val_size: int = 5000, split_seed: int = 0,
              binarize: str = "none", download: bool = True, saved: bool = False, given: bool = False,
              **how) -> MNISTData:
    """saved: the settings are a saved run's (vaelab eval, resume), and given: `root` is the
    user's --data-root, for val_size_error."""
    import torch

    x_train, y_train, x_test, y_test = load_mnist_arrays(root, download, **how)
    n = x_train.shape[0]
    if why := val_size_error(val_size, n, root, saved, given):
        raise DataError(why)
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

    val_is_test = val_size == 0
    cpu = [x_train[tr_idx], y_train[tr_idx], x_val, y_train[va_idx], x_test, y_test]
    digest = hashlib.sha256()  # 0.03 s for MNIST's 55 MB here (blake2b: 0.06)
    for t in cpu:
        digest.update(t.contiguous().numpy().data)
    x_tr, y_tr, x_va, y_va, x_te, y_te = (t.contiguous().to(device) for t in cpu)
    train, test = Split(x_tr, y_tr), Split(x_te, y_te)
    val = test if val_is_test else Split(x_va, y_va)
    return MNISTData(train, val, test, binarize=binarize, val_is_test=val_is_test, digest=digest.hexdigest()[:16],
                     split_seed=split_seed)


def to_float(batch_u8: torch.Tensor, binarize: str = "none", generator: torch.Generator | None = None
             ) -> torch.Tensor:
    """uint8 (B, D) -> float32 in [0, 1]; with dynamic binarization a fresh Bernoulli draw."""
    x = batch_u8.div(255.0)  # one kernel (uint8 in, float32 out), the same numbers as .float().div_(255)
    if binarize == "dynamic":
        import torch

        x = torch.bernoulli(x, generator=generator)
    return x
