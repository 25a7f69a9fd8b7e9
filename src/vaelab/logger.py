"""TensorBoard output of a run, written into the run directory itself.

`tensorboard --logdir outputs` then names every run by its folder. The x-axis of every
scalar is *examples seen* (not steps), so runs with different batch sizes line up.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summary

from vaelab.config import leaves

# The metrics the HParams dashboard compares (scalars hparams/<name>, logged at the end).
HPARAM_METRICS = ("val_loss", "val_recon", "val_kl", "active_units")
# And the test numbers papers report, columns of the same table once the run is evaluated: the
# evaluation (final, or vaelab eval) writes them as scalars test/<name> into the run's folder.
HPARAM_TEST_METRICS = ("nll_iwae", "bits_per_dim")
HPARAMS_SUFFIX = ".hparams"  # the event file that holds a run's HParams row (RunLogger.hparams_start)


def flatten(d: dict) -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists and None become strings (HParams takes scalars only),
    and so do booleans ('true'/'false'): torch's hparams() would store them as 1.0 and 0.0."""
    return {k: str(v).lower() if isinstance(v, bool) else v if isinstance(v, (int, float, str)) else str(v)
            for k, v in leaves(d, empty=False)}


def hparams_logged(run_dir: str | Path, x: int) -> bool:
    """Whether the run's events already hold its HParams metric values at x: a finished run
    started again (a requeued job, metrics.json lost) reports the same numbers, which must not
    be a second point of each."""
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    tag = f"hparams/{HPARAM_METRICS[0]}"
    for path in Path(run_dir).glob("events.out.tfevents.*"):
        for event in LegacyEventFileLoader(str(path)).Load():
            if event.step == x and any(v.tag == tag for v in event.summary.value):
                return True
    return False


def image_grid(x: torch.Tensor, image_shape: tuple, nrow: int | None = None) -> torch.Tensor:
    """(N, D) in [0, 1] -> one (C, H', W') grid image, via torchvision's make_grid."""
    from torchvision.utils import make_grid  # here: importing torchvision costs ~1.5 s, and
    # vaelab-train's pre-flight check, which refuses bad input, should not wait for it
    n = x.shape[0]
    imgs = x.detach().float().clamp(0, 1).reshape(n, *image_shape).cpu()
    return make_grid(imgs, nrow=nrow or grid_columns(n), padding=2, pad_value=1.0)


def save_png(img, path: str | Path) -> None:
    """An image grid ((C, H, W) in [0, 1], as image_grid makes) or a drawn figure's pixels ((H, W,
    4) uint8) as a PNG at zlib level 1: PIL's default, 6, took 1.5-4x as long for files of about
    the same size (58 against 64 KiB for curves.png, 78 against 69 for samples.png)."""
    import numpy as np
    from PIL import Image

    if isinstance(img, torch.Tensor):  # (as torchvision's save_image rounds)
        img = img.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).to("cpu", torch.uint8).numpy()
    Image.fromarray(np.ascontiguousarray(img).squeeze()).save(path, format="png", compress_level=1)


def grid_columns(n: int) -> int:
    """Columns for a grid of n images: ~sqrt(n), or a divisor of n up to twice that, so the grid
    has no empty cells (10 -> 5 x 2, as the seed script draws its samples; 12 -> 4 x 3; 7 -> 3)."""
    root = math.ceil(math.sqrt(n))
    return next((c for c in range(root, 2 * root + 1) if n % c == 0), root)


def quiet_writer_thread_errors() -> None:
    """A write that fails in TensorBoard's writer thread (a full disk) is kept by the writer and
    raised again at its next call in the thread that uses it, where train() and vaelab eval turn
    it into their one line; the thread's own death printed the same error as a traceback too.
    Installed once, in front of whatever threading.excepthook was there."""
    import threading

    try:
        from tensorboard.summary.writer.event_file_writer import _AsyncWriterThread
    except ImportError:  # (another tensorboard layout: its tracebacks stay)
        return
    before = threading.excepthook
    if getattr(before, "vaelab_quiet", False):
        return

    def hook(args):
        if not (isinstance(args.thread, _AsyncWriterThread) and isinstance(args.exc_value, OSError)):
            before(args)
    hook.vaelab_quiet = True
    threading.excepthook = hook


class RunLogger:
    """Thin wrapper around SummaryWriter. purge_step (in examples seen) drops events a killed
    run wrote after its last checkpoint, so a resumed run's curves have no duplicates."""

    def __init__(self, run_dir: str | Path, enabled: bool = True, purge_step: int | None = None):
        self.enabled = enabled
        if enabled:
            quiet_writer_thread_errors()
        self.w = SummaryWriter(log_dir=str(run_dir), purge_step=purge_step) if enabled else None
        self._row = None  # hparams_start's summaries, which hparams_end writes again with the row's end

    def scalars(self, values: dict, x: int, prefix: str = "") -> None:
        if self.w:
            for k, v in values.items():
                self.w.add_scalar(f"{prefix}{k}", float(v), x)

    def histogram(self, tag: str, values: torch.Tensor, x: int) -> None:
        if self.w:
            try:
                self.w.add_histogram(tag, values.detach().float().cpu(), x)
            except ValueError:  # TensorBoard's buckets fail on values near 1e20 and above ("The histogram is
                pass  # empty"): a run blowing up, which its next finite check stops; not a crash of its own

    def image(self, tag: str, grid: torch.Tensor, x: int) -> None:
        if self.w:
            self.w.add_image(tag, grid, x)

    def text(self, tag: str, text: str, x: int = 0) -> None:
        if self.w:
            self.w.add_text(tag, text, x)

    def hparams_start(self, config: dict, compared: set[str] = frozenset(),
                      choices: dict[str, list[str]] | None = None) -> None:
        """This run's HParams row (its flattened config), written when the run starts or is
        resumed, so that a run still training, stopped or diverged is listed too (its metrics
        blank until hparams_end), and a resumed run's row shows the config it goes on with.
        TensorBoard keeps the first row it reads in a run, so the row has an event file of its
        own (suffix .hparams) that a resume replaces. In this run's own folder:
        SummaryWriter.add_hparams would write to a new sub-folder and show every run twice.
        `compared`: the keys the runs differ in (a sweep's swept keys), marked so that the
        dashboard shows their columns first; without the mark it showed the first five by name
        (data.binarize, data.download, ...) and hid the swept one. `choices`: each text key's
        set of values (config.choices), which the dashboard needs to filter it by checkbox."""
        if not self.w:
            return
        from tensorboard.plugins.hparams import plugin_data_pb2

        names = {**{f"hparams/{k}": 0.0 for k in HPARAM_METRICS},  # the experiment's columns (values unused)
                 **{f"test/{k}": 0.0 for k in HPARAM_TEST_METRICS}}
        flat = flatten(config)
        domains = {k: v for k, v in (choices or {}).items() if isinstance(flat.get(k), str) and flat[k] in v}
        exp, ssi, _ = hparams_summary(flat, names, domains)
        meta = exp.value[0].metadata.plugin_data
        data = plugin_data_pb2.HParamsPluginData.FromString(meta.content)
        for info in data.experiment.hparam_infos:
            info.differs = info.name in compared
        meta.content = data.SerializeToString()
        self._row = (exp, ssi)
        self._write_row()

    def _write_row(self, *more) -> None:
        """The .hparams event file, replaced: the row (hparams_start's), then `more` ((summary,
        step) pairs)."""
        from torch.utils.tensorboard.writer import FileWriter

        old = list(Path(self.w.log_dir).glob(f"events.out.tfevents.*{HPARAMS_SUFFIX}"))
        fw = FileWriter(self.w.log_dir, filename_suffix=HPARAMS_SUFFIX)
        for summary in self._row:
            fw.add_summary(summary)
        for summary, step in more:
            fw.add_summary(summary, step)
        fw.close()
        for f in old:  # after the new row is on disk: a kill in between leaves one row, not none
            f.unlink(missing_ok=True)

    def hparams_end(self, metrics: dict, x: int, failed: bool = False) -> None:
        """The row's metric values, as scalars under the tags hparams_start named, and the end
        of the session: failed=True (a diverged run, no metrics) lets the HParams dashboard's
        status filter tell it from runs that finished or are still running."""
        if not self.w:
            return
        from torch.utils.tensorboard.summary import scalar

        values = {f"hparams/{k}": float(metrics[k]) for k in HPARAM_METRICS if k in metrics}
        end = hparams_summary({}, values)[2]  # torch writes STATUS_SUCCESS
        if failed:
            from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

            meta = end.value[0].metadata.plugin_data
            data = plugin_data_pb2.HParamsPluginData.FromString(meta.content)
            data.session_end_info.status = api_pb2.STATUS_FAILURE
            meta.content = data.SerializeToString()
        if self._row is None:  # (no row written by this logger: beside the run's other events)
            for k, v in values.items():
                self.w.add_scalar(k, v, x)
            self.w._get_file_writer().add_summary(end)
            return
        # In the row's own file, which a resume replaces: a finished run carried on to more epochs
        # is then listed as running, its metrics blank, not as finished with the old epochs'
        # numbers; and its hparams/* curves hold one point, the last (review)
        self._write_row(*[(scalar(k, v), x) for k, v in values.items()], (end, None))

    def flush(self) -> None:
        if self.w:
            self.w.flush()

    def close(self) -> None:
        if self.w:
            self.w.close()
