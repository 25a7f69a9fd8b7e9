"""vaelab-train: compose a config, train a VAE, leave everything in the run directory.

    vaelab-train                                   # defaults: conf/config.yaml
    vaelab-train experiment=seed data.root=../shared/data
    vaelab-train -m latent_size=2,16,64 loss.beta=1,4

Data flows one way: overrides -> composed, validated config -> data, model, optimizer ->
the loop in `_train()` -> run directory (.hydra/, events, checkpoints/, samples/, train.log,
metrics.json, eval.json). The model and optimizer are built in build.py; the folders of runs
and sweep jobs are named, and removed where a run never started, in run_dirs.py.
"""
from __future__ import annotations

import errno
import importlib
import json
import logging
import math
import os
import random
import shlex
import shutil
import signal
import sys
import threading
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from vaelab import checkpoint as ckpt_io
from vaelab.build import build_model, build_optimizer, model_error  # (build_model, build_optimizer: vaelab.train's too)
from vaelab.config import (CONF_DIR, LOG_FORMAT, ConfigError, absolute, choices, integer_as_bool_in_files, leaves,
                           on_schema, resolve_device, to_plain, typed, validate)
from vaelab.data import DataError, MNISTData, load_data, to_float
from vaelab.errors import (STOP_AFTER_STEP, STOP_SIGNALS, Interrupted, NonFiniteLoss, SaveFailed, after_hangup,
                           leaving_after_a_stop)
from vaelab.evaluate import ACTIVE_THRESHOLD, elbo_stats, flushing_subnormals, quiet
from vaelab.fused_loss import fused_vae_loss, kernels_unusable, kernels_work
from vaelab.logger import RunLogger, hparams_logged, image_grid, save_png
from vaelab.losses import MSE_NLL_CONST_PER_DIM, beta_at, vae_loss
from vaelab.models import VAE
from vaelab.pictures import reconstructions_grid
from vaelab.run_dirs import (SWEEP_OWN_FILES, another_jobs_run, from_launch_folder, job_name, made_for_this_launch,
                             remove_if_never_started, remove_sweep, save_job_config, sweep_dir)
from vaelab.workflow import SWEEP_CONTINUED, pin_environment

log = logging.getLogger("vaelab")


# --- building blocks (each usable on its own, e.g. by tests and `vaelab eval`) ------------


# What may differ from a run's saved config when train() carries the run on from Python: the
# progress bars, and where the machine keeps the data and the model. (Not trainer.epochs: the
# saved config's is what reproduce re-runs.)
_MAY_DIFFER = {"trainer.progress", "device", "data.root"}


def _check_same_settings(cfg: DictConfig, saved: Path, run_dir: Path) -> bool:
    """train(cfg, run_dir) on a folder that holds a run carried that run on under cfg, whatever
    cfg said: loss.beta=4 trained epoch 2 at beta 4 while the saved config, which reproduce
    re-runs, still said 1. It goes on (tests and scripts carry runs on so), with a warning that
    names vaelab resume, which records such changes. Whether it warned."""

    try:
        before = dict(leaves(to_plain(typed(OmegaConf.load(saved)))))
    except Exception:  # (an unreadable saved config: the checkpoint checks below speak for the run)
        return False
    now = dict(leaves(to_plain(cfg)))
    differ = [k for k in sorted({*before, *now} - _MAY_DIFFER) if before.get(k) != now.get(k)]
    if differ:
        k = differ[0]
        log.warning("carrying on the run in %s with settings its saved config does not have (%s: %s there, %s "
                    "here%s): that config, which vaelab reproduce re-runs, and the run's record of resumes do not "
                    "say so; vaelab resume %s KEY=VALUE changes a run's settings and records them", run_dir, k,
                    before.get(k), now.get(k), f", and {len(differ) - 1} more" if len(differ) > 1 else "",
                    shlex.quote(str(run_dir)))
    return bool(differ)


def check_epochs_to_resume(state: dict, epochs: int) -> None:
    """A checkpoint taken part-way through an epoch can only be carried on to the end of it: with
    trainer.epochs below that epoch the loop would not run, and the final metrics would call the
    weights of a partial epoch those of the last whole one."""
    if state.get("pos") and epochs <= state["epoch"]:
        raise ConfigError(f"trainer.epochs={epochs}: the run stopped part-way through epoch {state['epoch'] + 1}; "
                          f"give trainer.epochs={state['epoch'] + 1} or more to finish it")


def check_data_to_resume(state: dict, n_train: int) -> None:
    """A checkpoint taken part-way through an epoch carries that epoch's order of the training
    images: it can only be finished on a training split of the same size (other data, or another
    data.val_size, would index past its end)."""
    perm = state.get("perm")
    if state.get("pos") and perm is not None and len(perm) != n_train:
        raise DataError(f"the run stopped part-way through epoch {state['epoch'] + 1} of a training split of "
                        f"{len(perm)} images, and this data gives {n_train} (data.root, data.val_size): finish it on "
                        f"the data it was trained on")


def _under_config(saved: dict, opt: torch.optim.Optimizer) -> dict:
    """A checkpoint's optimizer state (Adam's moments and step counts) with the hyperparameters
    of `opt`, the optimizer built from the config: load_state_dict alone would bring back the
    saved betas, eps, weight_decay and implementation, so `vaelab resume optim.eps=1e-4` would
    write the new value into the run's config and train on with the old one."""
    groups = [{**old, **{k: v for k, v in new.items() if k != "params"}}
              for old, new in zip(saved["param_groups"], opt.state_dict()["param_groups"])]
    return {**saved, "param_groups": groups}


def lr_at(cfg: DictConfig, epoch: int) -> float:
    """Learning rate for a 0-based epoch. 'iwae' is Burda et al.'s schedule: optim.lr * 10^(-i/7)
    during the 3^i epochs of stage i = 0..7 (1 + 3 + 9 + ... + 2187 = 3280 epochs)."""
    if cfg.optim.schedule == "iwae":
        i, end = 0, 1
        while epoch >= end and i < 7:
            i += 1
            end += 3 ** i
        return cfg.optim.lr * 10 ** (-i / 7)
    return cfg.optim.lr


def forward_loss(forward, recon: str, amp=None, fused: VAE | None = None):
    """(x, beta) -> the loss terms of vae_loss (per-example means) for the model call `forward`
    (the model, or its torch.compile'd form), under the autocast context `amp` if one is given;
    the loss itself in float32. fused: the model, for loss.impl=triton (fused_loss_model)."""
    if fused is not None:
        return lambda x, beta: fused_vae_loss(fused, x, beta, recon)
    amp = amp if amp is not None else nullcontext()

    def terms(x: torch.Tensor, beta: float | torch.Tensor) -> dict[str, torch.Tensor]:
        with amp:
            logits, mu, logvar = forward(x)
        return vae_loss(logits.float(), x, mu.float(), logvar.float(), recon=recon, beta=beta)
    return terms


def fused_loss_model(cfg: DictConfig, model: torch.nn.Module, device: torch.device) -> VAE | None:
    """The model, where its training loss is to run as fused_loss.py's Triton kernels
    (loss.impl=triton, or auto in a CUDA-graph step: config.LossConfig); None for losses.py's
    torch ops (loss.impl=torch, auto elsewhere, or kernels that failed to build here, which
    fused_loss logs once). validate() has refused the settings loss.impl=triton cannot take;
    auto takes torch for them, and for what this function would refuse triton for."""
    impl, t = cfg.loss.impl, cfg.trainer
    if impl == "torch" or (impl == "auto" and not (device.type == "cuda" and t.cuda_graph and t.amp == "off"
                                                   and not t.compile)):
        return None
    own = [f for f in ("forward", "reparameterize") if getattr(type(model), f, None) is not getattr(VAE, f)]
    why = kernels_unusable(device)
    if impl == "auto" and (why or own or not isinstance(model, VAE)):
        return None
    if why:
        raise ConfigError(f"loss.impl=triton: {why}; loss.impl=torch is the same loss in torch kernels")
    if not isinstance(model, VAE) or own:
        raise ConfigError(f"loss.impl=triton: the kernels reparameterise as VAE.forward does, and "
                          f"{type(model).__name__} has its own {' and '.join(own) or 'forward'}: use loss.impl=torch")
    return model if kernels_work(device, getattr(cfg.loss.recon, "value", cfg.loss.recon), cfg.latent_size,
                                 getattr(model, "input_dim", 784), setting=f"loss.impl={impl}") else None


def make_step(loss_fn, model: torch.nn.Module, opt: torch.optim.Optimizer, images: torch.Tensor,
              sums: tuple[torch.Tensor, ...], binarize: str = "none", grad_clip: float = 0.0):
    """The training step, `step(idx, beta)`: the batch images[idx] as floats, loss_fn(x, beta)
    (forward_loss), backward, optional gradient clipping, the optimizer's update; then the
    step's (loss, recon, kl, examples) sums added into each tensor of `sums` on the device, so
    that the loop syncs with the host only when it logs. Returns nothing: everything it changes
    is updated in place, which is what lets CudaGraphStep replay it."""
    one = torch.ones((), device=images.device)

    def step(idx: torch.Tensor, beta: float | torch.Tensor) -> None:
        x = to_float(images.index_select(0, idx), binarize)
        terms = loss_fn(x, beta)
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        means = torch.stack([terms["loss"], terms["recon"], terms["kl"], one]).detach()
        for s in sums:
            s.add_(means, alpha=idx.shape[0])
    return step


def warm_up(cfg: DictConfig, device: torch.device, input_dim: int, graphed: bool,
            cancelled=lambda: False) -> None:
    """Two training steps of a throwaway copy of cfg's model (zero weights, zero images) on a
    stream of its own, for what a fresh process pays once: on a CUDA device, loading each
    kernel at its first launch and cuBLAS's first products, 0.2-0.3 s on an H200, which
    otherwise lands in epoch 1 (benchmarks/README.md). train() runs it in a thread while the
    main thread loads the data, and builds the real model after it. It changes nothing of the
    run: the copy is built on the meta device, so its initialisation draws nothing from the
    CPU generator (the real model's, after it, must find that where the seed put it); the
    device's generator, which the reparameterisation draws from, is put back as it was (the
    main thread draws nothing from it until the warm-up has finished). `cancelled()` is asked
    between the stages: the main thread's data loading failed, and the run is over."""
    rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()
    t = cfg.trainer
    # The model's module imported here, not under the meta device below: its module-level
    # tensors, if any, would be made on the meta device for the rest of the process.
    get_object(cfg.model._target_)
    try:
        # Everything on the warm-up's own stream, made there too: nothing it does waits for, or
        # races with, the data being copied to the device on the main thread's stream.
        with torch.cuda.device(device) if device.type == "cuda" else nullcontext():
            stream = torch.cuda.Stream(device) if device.type == "cuda" else None
            with torch.cuda.stream(stream):
                with torch.device("meta"):
                    model = build_model(cfg, input_dim)
                model = model.to_empty(device=device)
                with torch.no_grad():  # (to_empty leaves buffers, e.g. integer ones, as garbage too)
                    for x in (*model.parameters(), *model.buffers()):
                        x.zero_()
                opt = build_optimizer(cfg, model, capturable=graphed)
                amp = torch.autocast(device.type, dtype=torch.bfloat16) if t.amp == "bf16" else None
                images = torch.zeros(t.batch_size, input_dim, dtype=torch.uint8, device=device)
                fused = fused_loss_model(cfg, model, device)
                step = make_step(forward_loss(model, cfg.loss.recon, amp, fused), model, opt, images,
                                 (torch.zeros(4, device=device),), binarize=cfg.data.binarize, grad_clip=t.grad_clip)
                # beta as the loop passes it: a 0-dim tensor to the graph step, a float to the eager one
                idx = torch.arange(t.batch_size, device=device)
                beta = torch.zeros((), device=device) if graphed else 0.0
                for _ in range(2):  # Adam's first step makes its state; the second is every later step's
                    if cancelled():
                        break
                    step(idx, beta)
            if stream is not None:
                stream.synchronize()
    finally:
        if device.type == "cuda":
            torch.cuda.set_rng_state(rng, device)
        else:
            torch.set_rng_state(rng)


def start_warm_up(cfg: DictConfig, device: torch.device, graphed: bool):
    """warm_up in a thread where it pays (trainer.cuda_warmup, on a CUDA device). Returns
    `finish(cancel=False)`, which waits for it (and with cancel=True first tells it to stop at
    its next stage); call it before anything else draws from the device's generator. A warm-up
    that fails is logged and the run goes on; a CUDA error that breaks the device for the whole
    process would fail the run at its next CUDA call anyway."""
    if not (cfg.trainer.cuda_warmup and device.type == "cuda"):
        return lambda cancel=False: None
    from math import prod
    from vaelab.data import IMAGE_SHAPE

    if device.index is None:  # "cuda" is the current device, which a new thread would take as 0
        device = torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_initialized() else 0)
    # The modules both threads need, imported here, before the thread starts: the data loading
    # imports torchvision.datasets, which imports torch._dynamo, which a first torch Adam step
    # imports too (in the thread, its frames and their throwaway tensors would be kept in a
    # reference cycle). Two threads importing the same modules at once wait on each other: on
    # an H200 the thread's import of torch._dynamo alone took 4.9 s, the warm-up started after
    # the data had loaded, and the process took 0.9 s longer than without it (benchmarks/README.md).
    importlib.import_module("torchvision.datasets")
    importlib.import_module("torch._dynamo")
    stop, failed = threading.Event(), []

    def work():
        try:
            warm_up(cfg, device, prod(IMAGE_SHAPE), graphed, stop.is_set)  # the data's shape, known before it is read
        except Exception as e:  # noqa: BLE001 - the run itself will meet (and report) any real problem
            # the text only: the exception's traceback would keep the throwaway tensors alive
            failed.append(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)

    # Not a daemon: a thread still running CUDA work when the interpreter exits aborts the process.
    thread = threading.Thread(target=work, name="vaelab-cuda-warmup")
    thread.start()

    def finish(cancel: bool = False) -> None:
        if cancel:
            stop.set()
        thread.join()
        if failed and not cancel:
            log.warning("the CUDA warm-up step failed (%s); epoch 1 pays for the start-up instead", failed[0])
    return finish


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def _generators() -> tuple:
    """The states of the global generators seed_everything seeds (CUDA's where it is in use), for
    a refused train() to put back: a script's draws after it go on as if it had not been called."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    return random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda


def _put_back_generators(states: tuple) -> None:
    random.setstate(states[0])
    np.random.set_state(states[1])
    torch.set_rng_state(states[2])
    if states[3] is not None:
        torch.cuda.set_rng_state_all(states[3])


def _attach_logs(run_dir: Path) -> list[logging.Handler]:
    """train.log in the run dir, and the console log on stdout. Under Hydra its job logging
    does both already; for `vaelab resume` (no Hydra app) we add the handlers, in Hydra's
    format, and return them for removal."""
    path = (run_dir / "train.log").resolve()
    root = logging.getLogger()
    added: list[logging.Handler] = []
    if not _train_log_handlers(run_dir):
        added.append(logging.FileHandler(path, mode="a"))
        if not any(type(h) is logging.StreamHandler and not _closed(h) for h in root.handlers):
            added.append(logging.StreamHandler(sys.stdout))  # where vaelab-train's console log goes
        for h in added:
            h.setFormatter(logging.Formatter(LOG_FORMAT))
            root.addHandler(h)
        if root.level > logging.INFO or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)
    for h in root.handlers:  # (Hydra's console handler, or ours)
        if type(h) is logging.StreamHandler:
            _quiet_once_the_reader_has_gone(h)
    return added


def _train_log_handlers(run_dir: Path) -> list[logging.FileHandler]:
    """The root logger's handlers that write the run's train.log (Hydra's job logging,
    _attach_logs', a script's own)."""
    path = (run_dir / "train.log").resolve()
    return [h for h in logging.getLogger().handlers
            if isinstance(h, logging.FileHandler) and Path(h.baseFilename).resolve() == path]


def _to_train_log(run_dir: Path, record: logging.LogRecord) -> None:
    """`record` into the run's train.log alone, not on the console."""
    for h in _train_log_handlers(run_dir):
        h.handle(record)


def _console(record: logging.LogRecord) -> bool:
    """`record` on the console handlers alone (not into a file); False where there is none
    (hydra/job_logging=disabled, say), for the caller to print it itself."""
    took = False
    for h in logging.getLogger().handlers:
        if not isinstance(h, logging.FileHandler) and isinstance(h, logging.StreamHandler) and not _closed(h):
            h.handle(record)
            took = True
    return took


def _closed(handler: logging.StreamHandler) -> bool:
    """A console handler left behind by something earlier in this process (a Hydra app run from
    Python) may write to a stream closed since, a notebook's or pytest's capture: it prints
    nothing, and the log needs a handler of its own."""
    return bool(getattr(handler.stream, "closed", False))


def _detach_logs(handlers: list[logging.Handler], root_level: int) -> None:
    """Undo _attach_logs: its handlers removed and closed, the root logger's level as it was."""
    for h in handlers:
        logging.getLogger().removeHandler(h)
        h.close()
    logging.getLogger().setLevel(root_level)


@contextmanager
def logging_to(run_dir: Path):
    """train.log in run_dir, and the console, for as long as the block runs (_attach_logs)."""
    root_level = logging.getLogger().level
    handlers = _attach_logs(run_dir)
    try:
        yield
    finally:
        _detach_logs(handlers, root_level)


def _quiet_once_the_reader_has_gone(handler: logging.StreamHandler) -> None:
    """`vaelab-train ... | head -1`: once the reader has gone, each console line after it printed
    a 'Logging error' traceback to stderr (hundreds a run), the run itself unharmed. On the first
    broken pipe the console's file descriptor now goes to /dev/null; train.log keeps every line."""
    if getattr(handler, "_vaelab_quiet", False):
        return
    plain = handler.handleError

    def handle_error(record):
        if not isinstance(sys.exc_info()[1], BrokenPipeError):
            return plain(record)
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, handler.stream.fileno())
            os.close(null)
        except (OSError, ValueError, AttributeError):  # (no file descriptor behind it)
            return plain(record)
    handler.handleError = handle_error
    handler._vaelab_quiet = True


class CudaGraphStep:
    """The training step replayed as one CUDA graph (trainer.cuda_graph, on a CUDA device).

    At the seed's batch of 64 a step is ~75 kernels of a few microseconds each: launched one
    by one from Python, the GPU mostly waits for the CPU. Captured once and replayed, the
    whole step (gather, forward, loss, backward, Adam, the loss sums) is one launch. It is the
    same arithmetic up to float rounding, so it is not opt-in like bf16: Adam in the graph keeps
    its step count on the device, so optim.impl=auto is flat Adam there (build_optimizer), which
    differs from torch's fused Adam (the default outside a graph) by float rounding (optim.py),
    and foreach and forloop Adam, made capturable, work out their bias corrections in float32 on
    the device instead of float64 on the host. Only optim.impl=fused is the eager step's update.

    A graph replays fixed shapes at fixed addresses, so the batch's indices go through a
    fixed buffer and beta through a fixed 0-dim tensor, and a short last batch runs eagerly.
    The learning rate, like Adam's other settings, is baked into the captured update: a
    schedule that changes it (once an epoch) makes the next full batch capture the graph
    again. The first WARMUP full batches train eagerly on a side stream, as the CUDA graph
    notes ask, so that cuBLAS, autograd and Adam's state exist before capture.
    `step(idx, beta)` updates everything in place (weights, Adam's state, the sums) and
    returns nothing."""

    WARMUP = 3

    def __init__(self, step, opt: torch.optim.Optimizer, batch_size: int, device: torch.device):
        self.step, self.opt, self.device = step, opt, device
        self.idx = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.beta = torch.zeros((), device=device)
        self.side = torch.cuda.Stream(device)
        self.graph, self.hyper, self.warm = None, None, 0

    def __call__(self, idx: torch.Tensor, beta: float) -> None:
        self.beta.fill_(beta)  # a tensor in eager steps too: compiled code then sees the same types
        if idx.shape[0] != self.idx.shape[0]:  # the short last batch: another shape
            self.step(idx, self.beta)
            return
        if self.warm < self.WARMUP:
            with torch.cuda.device(self.device):  # streams and capture act on the current device
                self.side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(self.side):
                    self.step(idx, self.beta)
                torch.cuda.current_stream().wait_stream(self.side)
            self.warm += 1
            return
        # what the optimizer's kernels take as plain numbers, fixed in the graph when it is captured
        hyper = [(g["lr"], tuple(g["betas"]), g["eps"], g["weight_decay"]) for g in self.opt.param_groups]
        if self.graph is None or hyper != self.hyper:
            self.graph = None  # free the old graph's memory before capturing the new one
            graph = torch.cuda.CUDAGraph()
            # Captured on our stream of the run's device: torch.cuda.graph's own default stream is
            # made once per process, on whichever device was current then.
            with torch.cuda.device(self.device), torch.cuda.graph(graph, stream=self.side):
                self.step(self.idx, self.beta)  # recorded; nothing runs until replay
            self.graph, self.hyper = graph, hyper
        self.idx.copy_(idx)
        self.graph.replay()  # on the device it was captured on


class _StopFlag:
    """Ctrl-C / SIGTERM / SIGHUP (a closed terminal) set a flag; the loop saves a checkpoint
    after the current step and exits. A second Ctrl-C aborts at once, except while a checkpoint
    is being written (a fraction of a second for the seed model): aborting then would lose the checkpoint the first Ctrl-C
    asked for."""

    def __init__(self):
        self.signum = None
        self.saving = False
        self._old = {}

    def name(self) -> str:
        """What asked for the stop, for its message: the signal (SIGINT), or STOP_AFTER_STEP's step."""
        return f"{STOP_AFTER_STEP}={self.signum[1]}" if isinstance(self.signum, tuple) else \
            signal.Signals(self.signum).name

    def _handler(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            if self.saving:
                log.warning("writing the checkpoint; stopping right after it")
                return
            raise KeyboardInterrupt
        after_hangup(signum)
        if self.signum is not None:  # a SIGTERM after the stop was asked for (passed on by a parent): the same stop
            return
        self.signum = signum
        if self.saving:  # (a second Ctrl-C now would wait for this checkpoint: no "abort now")
            log.warning("got %s while writing a checkpoint: stopping right after it", signal.Signals(signum).name)
            return
        log.warning("got %s: will checkpoint after this step and stop%s", signal.Signals(signum).name,
                    " (Ctrl-C again to abort now)" if signum == signal.SIGINT else "")

    def __enter__(self):
        if threading.current_thread() is threading.main_thread() and not self._old:  # (entered once: see _train)
            for s in (signal.SIGINT, *STOP_SIGNALS):
                # A signal the process started ignoring stays ignored: nohup's hang-up, and the
                # Ctrl-C a script's `vaelab-train ... &` (no job control) leaves to the script.
                if signal.getsignal(s) is not signal.SIG_IGN:
                    self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc):
        # After a stop, a stop signal more is the same stop while train() records it (stopped.json,
        # the log line): a joblib parent's SIGTERM after the terminal's Ctrl-C cut that record short
        # in the outer handler's KeyboardInterrupt. Ignored until train() puts the handlers back.
        for s, h in self._old.items():
            signal.signal(s, h if self.signum is None else signal.SIG_IGN)


def _check_data_matches(data: MNISTData, dcfg) -> None:
    """train(cfg, run_dir, data=...): ConfigError with one line where `data` was loaded with
    another binarization or validation split than cfg.data says (the run would record settings
    it did not train with), or data.split_seed (review: it trained on split 0 and recorded 1). (data.root
    is not recorded in MNISTData: the run's data_digest tells other images apart.)"""
    binarize = str(dcfg.binarize)
    val = 0 if data.val_is_test else len(data.val)
    checks = [("data.binarize", data.binarize, binarize), ("data.val_size", val, dcfg.val_size)]
    if data.split_seed is not None:
        checks.append(("data.split_seed", data.split_seed, dcfg.split_seed))
    for key, loaded, wanted in checks:
        if str(loaded) != str(wanted):
            raise ConfigError(f"{key}={wanted}, but the data given to train() was loaded with {key}={loaded}: "
                              f"load it with the config's settings, or leave data out")


def _hydra_made(run_dir: Path) -> bool:
    """Whether this is the folder of the Hydra job now running (vaelab-train's), which has saved
    its config there; not so for train() from Python, also in a process where vaelab-train ran
    before (Hydra's config stays set)."""
    if not HydraConfig.initialized():
        return False
    out = OmegaConf.select(HydraConfig.get(), "runtime.output_dir")
    return bool(out) and os.path.realpath(out) == os.path.realpath(run_dir)


def _as_this_process_reads_it(cfg: DictConfig) -> DictConfig:
    """The config a run made from Python saves: its data.root absolute, as this process read it
    (relative to the current folder, or from VAELAB_DATA), so that `vaelab eval`, `resume` and
    `reproduce` in another folder or shell read the same data; vaelab-train's runs record their
    launch folder in .hydra/hydra.yaml instead (evaluate_run.data_root)."""
    # (a plain copy: a script's config, or a part of it, may be read-only)
    saved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False, enum_to_str=True))
    saved.data.root = absolute(str(cfg.data.root))
    return saved


def _compared_keys(run_dir: Path) -> set[str]:
    """The config keys this run is compared on in HParams: a sweep's swept keys (from its
    multirun.yaml; else the command line's keys that the job folders' names do not leave out),
    else every key the command line set. Read from the files Hydra saved, so `vaelab resume`
    finds the same."""
    hydra_dir = run_dir / ".hydra"
    swept = _swept_keys(run_dir.parent / "multirun.yaml")  # a sweep's job: its sweep's own command line
    if swept:
        return swept
    try:
        # (unresolved: a list's ${trainer.batch_size} resolved against the list itself and failed, review)
        task = [str(o) for o in OmegaConf.to_container(OmegaConf.load(hydra_dir / "overrides.yaml"), resolve=False)]
        fixed = OmegaConf.select(OmegaConf.load(hydra_dir / "hydra.yaml"),
                                 "hydra.job.config.override_dirname.exclude_keys", default=None) or []
    except Exception:  # noqa: BLE001 - no saved Hydra files (train() called directly), or unreadable: no marks
        return set()
    keys = [o.split("=", 1)[0].lstrip("+~") for o in task]
    if OmegaConf.select(OmegaConf.load(hydra_dir / "hydra.yaml"), "hydra.mode", default=None) == "RUN":
        # One run: every key its command lines set, `vaelab resume RUN KEY=VALUE`'s too (review: vaelab-train
        # puts all of a run's own keys in exclude_keys, so a resume's left only its own marked)
        return set(keys)
    # an Optuna study's trial (its sweeper writes no multirun.yaml): the search space, in its own hydra.yaml
    return _swept_keys(hydra_dir / "hydra.yaml") or {k for k in keys if k not in set(fixed)} or set(keys)


def _swept_keys(multirun_yaml: Path) -> set[str]:
    """The keys a sweep varies: those its command line gave several values (a,b / range / glob),
    and the keys of an Optuna study's search space; for a config group swept (experiment=a,b), the
    keys its options' files set. Empty where there is no such file."""
    try:
        saved = OmegaConf.load(multirun_yaml)
        task = OmegaConf.select(saved, "hydra.overrides.task", default=None)
        task = [str(o) for o in OmegaConf.to_container(task, resolve=False)] if task is not None else []
        params = OmegaConf.select(saved, "hydra.sweeper.params", default=None) or {}
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parser = OverridesParser.create()
        given = parser.parse_overrides(task)
        parsed = [o for o in given if o.is_sweep_override()]
        parsed += parser.parse_overrides([f"{k}={v}" for k, v in params.items()])
    except Exception:  # noqa: BLE001 - no sweep here, or a file that does not parse: no marks from it
        return set()
    keys = {o.key_or_group for o in parsed}
    groups = _groups_keys(OmegaConf.select(saved, "hydra.runtime.config_sources", default=None) or [], parsed)
    one_value = {o.key_or_group for o in given if not o.is_sweep_override()}
    return (keys - set(groups)) | {k for group in groups.values() for k in group if k not in one_value}


def _groups_keys(sources, parsed) -> dict[str, set[str]]:
    """{group: the config keys its swept options' files all set, to different values} for each
    config group among the overrides `parsed` (experiment=seed,iwae_paper_vae): the group's name
    is no HParams column, and without them a sweep of experiments marked none (review). Read
    through the config sources the sweep saved (its --config-dir too); empty where they cannot
    be read."""
    try:
        from hydra._internal.config_repository import ConfigRepository
        from hydra._internal.config_search_path_impl import ConfigSearchPathImpl
        from hydra.core.plugins import Plugins

        Plugins.instance()  # (registers the config source types: file://, pkg://, structured://)
        path = ConfigSearchPathImpl()
        for s in sources:
            path.append(s.provider, f"{s.schema}://{s.path}")
        repo = ConfigRepository(path)
    except Exception:  # noqa: BLE001 - Hydra's own layout, read as 1.3 has it: without it, the group's name only
        return {}
    found = {}
    for o in parsed:
        try:
            sets = _options_set(repo, o)
        except Exception:  # noqa: BLE001 - a file that does not read now: that group marks nothing
            continue
        if sets is not None:
            # (set in some of them only, a key's value elsewhere is the defaults' it pulls in, unknown here: a
            # glob(*) over vaelab's mlp and own files that extend it marked every key mlp.yaml sets)
            every = set.intersection(*(set(one) for one in sets)) if sets else set()
            found[o.key_or_group] = {k for k in every if len({repr(one[k]) for one in sets}) > 1}
    return found


def _options_set(repo, o) -> list[dict] | None:
    """{key: value} that each option of the config group override `o` sets in its own file, or
    None where `o` is no config group's."""
    from hydra.core.override_parser.types import ChoiceSweep, Glob, RangeSweep

    group = o.get_key_element().lstrip("+~").split("@")[0]
    if not repo.group_exists(group):
        return None
    value = o.value()
    if isinstance(value, Glob):
        options = value.filter(repo.get_group_options(group))
    elif isinstance(value, (ChoiceSweep, RangeSweep)):
        options = [str(v) for v in o.sweep_string_iterator()]
    else:
        options = [str(value)]
    sets = []
    for option in options:
        loaded = repo.load_config(f"{group}/{option}")
        if loaded is None:
            continue
        # (the override's @PKG first, as Hydra composes it: +exp@_global_=a puts a's keys at the top, review)
        package = o.package if o.package is not None else loaded.header.get("package") or group.replace("/", ".")
        package = "" if package == "_global_" else package.replace("_global_.", "")
        body = {k: v for k, v in OmegaConf.to_container(loaded.config, resolve=False).items()
                if k not in ("defaults", "hydra")}
        sets.append(dict(leaves(body, package)))
    return sets


def _rss_mib() -> float:
    """Resident memory of this process now (Linux /proc; 0 elsewhere): a leak shows as growth."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except (OSError, ValueError):
        return 0.0


@torch.no_grad()
def _pictures(model: VAE, fixed_z: torch.Tensor, recon_x: torch.Tensor, writer: RunLogger, x_ax: int,
              png_dir: Path | None, epoch: int) -> None:
    """Samples from the fixed noise, and reconstructions (inputs above, outputs below)."""
    was = model.training
    model.eval()
    samples = image_grid(model.decode(fixed_z), model.image_shape)
    pairs = reconstructions_grid(model, recon_x, recon_x.shape[0])  # one row of inputs, one of outputs
    model.train(was)
    writer.image("samples", samples, x_ax)
    writer.image("reconstructions", pairs, x_ax)
    if png_dir is not None:
        save_png(samples, png_dir / f"samples_epoch{epoch:04d}.png")
        save_png(pairs, png_dir / f"recon_epoch{epoch:04d}.png")


# --- the loop ----------------------------------------------------------------------------


DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)  # no space, quota, read-only, size limit


def _hydras_job(run_dir: Path) -> bool:
    """Whether run_dir is the folder of the Hydra job this process runs (vaelab-train's)."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return HydraConfig.initialized() and os.path.realpath(HydraConfig.get().runtime.output_dir) == \
            os.path.realpath(run_dir)
    except Exception:  # noqa: BLE001 - (no runtime section: not a job's)
        return False


def _once_writable(e: OSError) -> str:
    """When to carry on after a failed write: room for a full disk, quota or size limit; else
    (read-only, permission) once the run's folder can be written again."""
    return "there is room" if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else "it can be written"


def train(cfg: DictConfig, run_dir: str | Path, data: MNISTData | None = None, on_start=None) -> dict:
    """Train (or continue) the run in run_dir; returns the final metrics (also metrics.json).
    `data`: the dataset already loaded for this config (vaelab resume loads it before it
    changes the run's files; a ConfigError where its binarization or validation split is not
    the config's); by default it is loaded here. It seeds torch's, NumPy's and Python's global
    generators with cfg.seed (a script's own draws after it follow the run's; a call refused before it
    trains leaves them as they were). `on_start()`: called once the model,
    the optimizer and the checkpoint to resume from have passed their checks, before anything of
    the run's folder changes (vaelab resume writes the config it carries on with there, so that
    a resume that fails before that point leaves the run as it was)."""
    cfg = on_schema(cfg)
    validate(cfg)
    run_dir = Path(run_dir)
    if ".." in run_dir.parts:  # missing/../run: the folder meant, not missing/ made beside it (config.absolute)
        run_dir = Path(absolute(run_dir))
    if os.path.lexists(run_dir) and not run_dir.is_dir():  # (mkdir's "File exists")
        raise ConfigError(f"run_dir {run_dir}: " + ("a link to nothing" if run_dir.is_symlink() else "a file") +
                          ", not a folder for the run")
    # (review: a call on a folder of one's own wrote its metrics.json over the user's). Not vaelab-train's
    # folder, which its pre-flight checked (Hydra's config saved there, or not: hydra.output_subdir=null), nor
    # a run whose saved config is gone (carried on from its checkpoints, as before); a *.log may be the
    # script's own (logging.basicConfig(filename=...) before the call), which the run's lines join.
    if not ckpt_io.is_run(run_dir) and not _hydras_job(run_dir) and not any((run_dir / "checkpoints").glob("*.pt")):
        from vaelab.cli_errors import foreign

        err = foreign(run_dir, ignore={p.name for p in run_dir.glob("*.log")})
        if err:
            raise ConfigError(f"run_dir {run_dir}: {err}")
    made = _folders_to_make(run_dir)  # (removed again, with what this call put in them, if it is refused)
    before = _names(run_dir) if not made else set()
    run_dir.mkdir(parents=True, exist_ok=True)  # checkpoints/ and samples/ come once the data has loaded
    refused = False
    generators = _generators()
    root_level = logging.getLogger().level  # (_attach_logs lowers it to INFO; a script's own stays its own)
    handlers = []  # (train.log, once the run's folder is held: not one in a folder another process trains)
    try:
        with _process_settings_kept(), ckpt_io.only_process(run_dir):
            handlers = _attach_logs(run_dir)
            try:
                try:
                    return _train(cfg, run_dir, data, on_start)
                except OSError as e:  # a checkpoint's own failure is SaveFailed already (save, in _train)
                    # (a folder of the run made unwritable under it: chmod, chattr +i)
                    # (TensorBoard's writer names its file in bytes: that was a TypeError's traceback, review)
                    name = os.fsdecode(e.filename) if isinstance(e.filename, (str, bytes)) else None
                    denied = e.errno in (errno.EACCES, errno.EPERM) and name is not None and \
                        Path(os.path.abspath(name)).is_relative_to(os.path.abspath(run_dir))  # (both without ..)
                    if e.errno not in DISK_FULL and not denied:
                        raise
                    # a disk that fills up (or a quota, or read-only) under metrics.json, the sample
                    # PNGs or the final evaluation's files: the same one line as for a checkpoint
                    kept = ("the checkpoints already there are intact" if any((run_dir / "checkpoints").glob("*.pt"))
                            else "it has no checkpoint yet")
                    raise SaveFailed(f"cannot write {name or run_dir}: {e.strerror or e}; {kept}; once "
                                     f"{_once_writable(e)}: {ckpt_io.carry_on(run_dir)}") from None
            except (NonFiniteLoss, Interrupted, SaveFailed) as e:
                # Recorded while the run is still held: a joblib parent ends a stopped worker once
                # its run is let go, and stopped.json and this line, written after, were lost at times.
                if isinstance(e, Interrupted):
                    log.warning("%s", e)  # asked for, and nothing lost: not an error
                else:  # into the run's train.log, which ended at its last epoch line (review); the caller says
                    # it on the console (vaelab-train, vaelab resume: their own line; from Python: the exception)
                    _to_train_log(run_dir, log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s", (e,), None))
                for empty in (run_dir / "checkpoints", run_dir / "samples"):  # (stopped before its first: review)
                    try:
                        empty.rmdir()
                    except OSError:  # (not empty, or not there)
                        pass
                if not getattr(e, "finished", False):  # (done, only its final evaluation left: not a stopped run)
                    state = {NonFiniteLoss: "diverged", Interrupted: "interrupted", SaveFailed: "failed"}[type(e)]
                    try:
                        # (a diverged run's settings: a sweep's trial that draws them again is told by them)
                        settings = {"config": to_plain(cfg)} if state == "diverged" else {}
                        ckpt_io.write_text_atomic(run_dir / ckpt_io.STOPPED,
                                                  json.dumps({"state": state, "reason": str(e), **settings}))
                    except OSError:  # the run folder itself is not writable: the message still says it
                        pass
                raise
            except Exception:  # refused at its start (bad input), or a bug in a model of one's own
                refused = _remove_what_it_added(run_dir, before)  # (held: not what another process began there)
                if refused:
                    _put_back_generators(generators)
                raise
    finally:
        _detach_logs(handlers, root_level)
        if refused:
            for folder in reversed(made):  # the run's folder, and those made to hold it, where now empty
                try:
                    folder.rmdir()
                except OSError:
                    break


@contextmanager
def _process_settings_kept():
    """What _train sets for one run (a resumed run's thread count, trainer.deterministic,
    trainer.flush_denormal, the stop handlers) put back after it: one process may train several
    runs (tests, a sweep's jobs, vaelab resume, a script's calls), each its own way."""
    threads = torch.get_num_threads()
    deterministic = (torch.are_deterministic_algorithms_enabled(),
                     torch.is_deterministic_algorithms_warn_only_enabled())
    cudnn_benchmark, cublas_workspace = torch.backends.cudnn.benchmark, os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    flushing = flushing_subnormals()
    signals = ({s: signal.getsignal(s) for s in (signal.SIGINT, *STOP_SIGNALS)}  # (_StopFlag's, after a stop)
               if threading.current_thread() is threading.main_thread() else {})
    try:
        yield
    finally:
        for s, handler in signals.items():
            if handler is not None:  # (None: set outside Python)
                signal.signal(s, handler)
        torch.set_num_threads(threads)
        # Only where the run changed it: the call imports torch._inductor (1.1 s), and a Ctrl-C that
        # cut the import of sympy short (torchvision and Adam import it, in the first seconds of a
        # run) left sympy half-made, so that import failed and its AttributeError hid the stop.
        if (torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled()) != deterministic:
            torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
        torch.backends.cudnn.benchmark = cudnn_benchmark
        torch.set_flush_denormal(flushing)
        if cublas_workspace is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


def _folders_to_make(run_dir: Path) -> list[Path]:
    """The folders run_dir.mkdir(parents=True) will make, outermost first."""
    missing = []
    for folder in (run_dir, *run_dir.parents):
        if os.path.lexists(folder):
            break
        missing.append(folder)
    return missing[::-1]


# What train() writes in a run's folder before its input has passed its checks (its log; the
# folder its saved config goes to). From there on it makes checkpoints/, and the folder is the run's.
_BEFORE_IT_BEGINS = {".hydra", "train.log"}


def _remove_what_it_added(run_dir: Path, before: set[str]) -> bool:
    """A train() from Python refused at its start (bad data, a model that does not fit, a bug in
    a model's constructor, ...) left a folder that listed in `vaelab compare` as an unfinished run, and that `vaelab resume`
    offered to start again as it was (vaelab-train removes its own, hydra_main). What this call
    added to the folder goes, where it holds nothing that trained; what was there before stays.
    True if it removed all it added."""
    added = _names(run_dir) - before
    if not added <= _BEFORE_IT_BEGINS | {".hydra/config.yaml"}:
        return False
    if ".hydra" in added and {p.name for p in (run_dir / ".hydra").iterdir()} - {"config.yaml"}:
        return False
    for name in sorted(added, reverse=True):  # (.hydra/config.yaml before .hydra)
        if (run_dir / name).is_dir():
            shutil.rmtree(run_dir / name, ignore_errors=True)
        else:
            (run_dir / name).unlink(missing_ok=True)
    return True


def _names(run_dir: Path) -> set[str]:
    """What a run folder holds, for _remove_what_it_added: its entries, and its saved config."""
    names = {p.name for p in run_dir.iterdir()}
    if (run_dir / ".hydra" / "config.yaml").is_file():
        names.add(".hydra/config.yaml")
    return names


def _load_to_resume(cfg: DictConfig, path: Path, model: VAE, opt: torch.optim.Optimizer, st: dict,
                    data: MNISTData) -> tuple[dict | None, dict]:
    """Continue from the checkpoint at `path`: its weights, Adam's state, the loop's state (into
    `st`), the random generators and the run's thread count, once it is checked against this
    config and data (one line for what does not fit). Returns what resumes.yaml records when the
    data has changed since (its digest), else None; and the config the checkpoint was saved under."""
    ck = ckpt_io.load(path, map_location="cpu")
    ckpt_io.check_resumable(ck, path)
    ckpt_io.check_compatible(ck, model, path, cfg, ckpt_io.SAME_TO_RESUME)
    model.load_state_dict(ck["model"])
    opt.load_state_dict(_under_config(ck["optimizer"], opt))
    st.update(ck["state"])
    check_data_to_resume(st, len(data.train))
    data_changed = None
    if st["data_digest"] != data.digest:  # (a checkpoint from before 2026-11-26 has none: st keeps this one)
        log.warning("the data differs from what this run trained on until now (data digest %s, now %s): "
                    "data.root=%s", st["data_digest"], data.digest, cfg.data.root)
        data_changed = {"epoch": st["epoch"] + 1, "step": st["step"],
                        "data_digest": {"before": st["data_digest"], "now": data.digest}}
        st["data_digest"] = data.digest
    check_epochs_to_resume(st, cfg.trainer.epochs)
    if st["threads"] != torch.get_num_threads():
        # The run's CPU sums were made with that many threads: the same count keeps a resumed run
        # bit-identical to one never stopped (`vaelab resume`, or a resumed sweep's job under a
        # launcher that gives it another count), and metrics.json's torch_threads true.
        log.info("using %d CPU threads, as the run did (this process had %d)", st["threads"],
                 torch.get_num_threads())
        torch.set_num_threads(st["threads"])
    ckpt_io.set_rng_state(ck["rng"])
    t, lcfg, was = cfg.trainer, cfg.loss, ck["config"].get("loss") or {}
    was_batch = (ck["config"].get("trainer") or {}).get("batch_size", t.batch_size)
    if st["pos"] and (was.get("beta") != lcfg.beta or was.get("kl_warmup_steps") != lcfg.kl_warmup_steps
                      or was_batch != t.batch_size):
        # beta, or the batches it weighs, changed part-way through this epoch (vaelab resume loss.beta=...,
        # trainer.batch_size=...): its mean beta is the one summed over its steps, not the new settings'
        # over all of them (review: epochs.jsonl's beta), and so is each log point's
        if "epoch_beta" not in ck["state"]:  # (a checkpoint from before it was kept: the steps so far, as
            first = st["step"] - st["pos"] // was_batch  # the settings it was saved under gave them)
            st["epoch_beta"] = sum(beta_at(s, was.get("beta", lcfg.beta), was.get("kl_warmup_steps", 0))
                                   * was_batch for s in range(first, st["step"]))
        st["beta_changed"] = True
    if "log_beta" not in ck["state"] and st["pos"]:
        # A checkpoint from before log_beta was kept, taken part-way through a log interval: the
        # interval began at the last log point or at the epoch's first step, all full batches since,
        # under the settings the checkpoint was saved with (review: the new ones gave a mean beta of neither)
        every = (ck["config"].get("trainer") or {}).get("log_every", t.log_every)
        first = max(st["step"] - st["step"] % every, st["step"] - st["pos"] // was_batch)
        st["log_beta"] = sum(beta_at(s, was.get("beta", lcfg.beta), was.get("kl_warmup_steps", lcfg.kl_warmup_steps))
                             * was_batch for s in range(first, st["step"]))
    return data_changed, ck["config"]


def _carried_on_otherwise(saved: dict, now: dict) -> bool:
    """Whether a resume goes on under settings other than its checkpoint's: of the keys the
    checkpoint holds (one from an older vaelab lacks later keys, which take the values it trained
    with), and not name, which names the folder (name=${now:...} reads as the resume's time)."""
    now = dict(leaves(now))
    return any(now.get(key, _ABSENT) != value for key, value in leaves(saved) if key != "name")


_ABSENT = object()


def _epoch_history(path: Path, epochs: int) -> list[str]:
    """The lines of `path` for the first `epochs` epochs, rewritten so if it had more (or a line
    that cannot be read); the file removed when none is kept."""
    try:  # (a byte that is no UTF-8, in a line edited by hand: that line goes, not the resume)
        lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return []
    kept = []
    for line in lines:
        try:
            if json.loads(line)["epoch"] <= epochs:
                kept.append(line)
        except (ValueError, KeyError, TypeError):  # (edited by hand: the line goes, as a later epoch's)
            pass
    if not kept:
        path.unlink()
    elif kept != lines:
        ckpt_io.write_text_atomic(path, "\n".join(kept) + "\n")
    return kept


def _append_line(path: Path, line: str) -> None:
    """One line at the end of `path`, on disk before the checkpoint that vouches for it. Appended,
    not the whole file rewritten (a 3280-epoch run's would be rewritten 3280 times); a line a kill
    cuts short is dropped by the resume's _epoch_history before anything is appended after it."""
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:  # (a full disk fails write(), which names no file)
        if e.filename is None and e.errno is not None:
            e.filename = str(path)
        raise


def _save_config(path: Path, cfg: DictConfig, from_python: bool) -> None:
    path.parent.mkdir(exist_ok=True)
    ckpt_io.write_text_atomic(path, OmegaConf.to_yaml(_as_this_process_reads_it(cfg) if from_python else cfg))


def _train(cfg: DictConfig, run_dir: Path, data: MNISTData | None, on_start=None) -> dict:
    ckpt_dir, sample_dir = run_dir / "checkpoints", run_dir / "samples"
    saved_cfg = run_dir / ".hydra" / "config.yaml"
    from_python = not _hydra_made(run_dir)  # (vaelab-train's Hydra has saved the config)
    # train() called from Python: the run stays reproducible anyway, with the config this call
    # trains. A new run's is written at once (one killed while its data downloads can be started
    # again; a refused call's goes with the folder, train()); an earlier call's, in a run with no
    # checkpoint yet, is replaced once the input has passed its checks (a refused call leaves it).
    holds_a_run = ckpt_io.latest(ckpt_dir) is not None or (run_dir / "metrics.json").is_file()
    save_config = saved_cfg.exists() and from_python and not holds_a_run
    if not cfg.trainer.resume and holds_a_run:
        # (it trained from scratch in the folder, beside the other run's checkpoints, events and
        # samples, and cut its epochs.jsonl short, without a word: review)
        raise ConfigError(f"trainer.resume=false: {run_dir} holds a run already; a run started over there would mix "
                          f"its files with that one's: give another folder, or leave trainer.resume=true to carry "
                          f"that run on")
    if not saved_cfg.exists():
        _save_config(saved_cfg, cfg, from_python)
    t, lcfg = cfg.trainer, cfg.loss
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    # Subnormal floats (< 1.2e-38, e.g. sigmoid of the very negative logits MNIST's black
    # background drives the decoder to) are ~100x slower on x86 CPUs: without flushing them to
    # zero the seed model's epoch 2 took 5.6 s instead of 3.1, with epoch losses equal to 4
    # decimals (README.md, Overrides).
    torch.set_flush_denormal(t.flush_denormal)
    if t.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    graphed = t.cuda_graph and device.type == "cuda"

    if data is None:
        warmed_up = start_warm_up(cfg, device, graphed)  # two throwaway steps on a CUDA device, while the data loads
        try:
            data = load_data(cfg.data.root, device, val_size=cfg.data.val_size, split_seed=cfg.data.split_seed,
                             binarize=cfg.data.binarize, download=cfg.data.download)
        except BaseException:  # (the run is over: no thread left behind, nor its generator state)
            warmed_up(cancel=True)
            raise
        warmed_up()  # before anything draws from the device's generator
    else:  # (a script's one load for several runs: its settings must be these, which the run records)
        _check_data_matches(data, cfg.data)
    n_train = len(data.train)
    if data.val_is_test:
        log.info("data.val_size=0: training on all %d images; 'val' metrics are computed on the test split", n_train)
    elif len(data.val) < 2:  # (Cov_x over one image is 0: every dimension reads as dead)
        log.warning("data.val_size=%d: active_units, a variance across the validation images, needs 2 or more; "
                    "with one it reads 0", len(data.val))
    if not t.compile and t.compile_mode != "default":  # (a saved run's config may hold it: a warning, not a refusal)
        log.warning("trainer.compile_mode=%s does nothing with trainer.compile=false: add trainer.compile=true to "
                    "compile the model", t.compile_mode)
    if t.batch_size > n_train:  # (allowed: the one batch is the whole training set, as a DataLoader's would be)
        log.warning("trainer.batch_size=%d is larger than the %d training images: each epoch is one step of %d",
                    t.batch_size, n_train, n_train)
    model = build_model(cfg, data.train.dim, data.train.image_shape)  # (one line for what cannot be built)
    try:
        model = model.to(device)
    except Exception as e:  # weights the device has no room for: one line too (model_error)
        err = model_error(cfg, e)
        if err is e:  # an error in the model's own code: as raised, with its cause and traceback
            raise
        raise err from None
    opt = build_optimizer(cfg, model, capturable=graphed)
    fused = fused_loss_model(cfg, model, device)
    plain_cfg = to_plain(cfg)

    # Everything needed to continue exactly where a run stopped.
    # CPU float sums depend on the thread count: it is recorded so that `vaelab resume` and
    # `vaelab reproduce` can use the same one and stay bit-identical.
    st = {"epoch": 0, "step": 0, "examples": 0, "best_val": math.inf, "train_seconds": 0.0,
          "perm": None, "pos": 0, "epoch_acc": None, "log_acc": None, "log_beta": 0.0, "data_rng": None,
          "epoch_beta": 0.0, "beta_changed": False,
          "threads": torch.get_num_threads(), "data_digest": data.digest}
    last_path = ckpt_dir / "last.pt"
    last_good = None  # (the checkpoint, where in the run it was saved): for the messages of a stop

    def good_checkpoint() -> str:  # (a divergence's message: what it keeps)
        return f"{last_good[0]} ({last_good[1]})" if last_good else "none yet"

    def where_in_run() -> str:  # (the stop message's words)
        return f"in epoch {st['epoch'] + 1} at image {st['pos']}/{n_train}" if st["pos"] else f"after epoch {st['epoch']}"

    # A sweep's job names its bar and its epoch lines: joblib's parallel workers write to one
    # terminal, where unnamed lines could be any job's. Their per-step bars stay off: two
    # processes redrawing one terminal line wrote over each other and into the epoch lines.
    job = f"{run_dir.name} " if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN else ""
    from vaelab.train_cli import in_loky_worker
    show_progress = t.progress and not (job and in_loky_worker())
    resumed, data_changed, unsaid, saved_under = False, None, False, None
    resume_from = ckpt_io.latest(ckpt_dir) if t.resume else None
    if resume_from is not None and on_start is None:  # (vaelab resume checks, records and saves its changes)
        unsaid = _check_same_settings(cfg, saved_cfg, run_dir)  # settings the saved config does not have
    if resume_from is not None:
        data_changed, saved_under = _load_to_resume(cfg, resume_from, model, opt, st, data)
        resumed = True
        if resume_from.name != last_path.name and last_path.is_file():  # (a stop between an epoch's writes)
            log.warning("%s is behind %s, which trained furthest (a stop came between the end of an epoch's "
                        "checkpoint writes): resuming from %s", last_path, resume_from.name, resume_from.name)
        elif resume_from.name != last_path.name:  # a kill before the first last.pt, or it was deleted
            log.warning("%s is missing: resuming from the complete checkpoint that trained furthest, %s", last_path,
                        resume_from.name)
        at = where_in_run()
        last_good = (resume_from, at)  # (best.pt, when last.pt was missing)
        log.info("resuming %s from %s %s (step %d, %d examples seen)", run_dir, resume_from, at, st["step"],
                 st["examples"])
    # The input and the checkpoint are good: from here on the run folder changes. A stop from here
    # on is the training loop's (a checkpoint after the next step): one before its first step, while
    # the folder was being set up, left a folder with no checkpoint and no stopped.json (review).
    stop = _StopFlag().__enter__()  # (the loop's `with stop:` then only puts the handlers back)
    if save_config:
        _save_config(saved_cfg, cfg, from_python)
    if on_start is not None:
        on_start()
    if data_changed:  # metrics.json keeps the last digest only: the run's record of resumes says when it changed
        from vaelab.workflow import record_resume
        record_resume(run_dir, data_changed)
    # The epochs the checkpoint vouches for (a resume from an older one, or from best.pt, drops the
    # later epochs, which are run again; a kill mid-line, that line); a fresh start's folder keeps no
    # earlier start's. Each epoch's line is appended to what is kept.
    _epoch_history(run_dir / ckpt_io.EPOCHS, st["epoch"] if resumed else 0)
    (run_dir / ckpt_io.STOPPED).unlink(missing_ok=True)  # why the run last stopped early; `vaelab compare` shows it
    ckpt_dir.mkdir(exist_ok=True)
    sample_dir.mkdir(exist_ok=True)
    partial = ckpt_io.remove_partial(ckpt_dir) + ckpt_io.remove_partial(run_dir)
    if partial:
        log.info("removed %d partial file(s) that a killed process left mid-write", partial)
    if resumed and resume_from != last_path:
        # last.pt again the furthest, as the end of the epoch would have left it: a run with nothing
        # left to train evaluated the older last.pt as its final weights, and eval took it (review)
        ckpt_io.write_atomic(last_path, lambda f: f.write(resume_from.read_bytes()))
        resume_from, last_good = last_path, (last_path, last_good[1])
    finished = st["epoch"] >= t.epochs and st["pos"] == 0
    if finished:
        log.info("nothing to do: the run has %d of trainer.epochs=%d epochs", st["epoch"], t.epochs)
    else:  # a finished run carried on (trainer.epochs raised): its final metrics are no longer final
        (run_dir / "metrics.json").unlink(missing_ok=True)

    data_gen = torch.Generator()  # batch order only; its state is checkpointed
    data_gen.manual_seed(cfg.seed)
    if st["data_rng"] is not None:
        data_gen.set_state(st["data_rng"])
    # Fixed picture inputs: the same z and the same digits every epoch, so grids show learning.
    pic_gen = torch.Generator().manual_seed(cfg.seed)
    fixed_z = torch.randn(t.num_samples, cfg.latent_size, generator=pic_gen).to(device)
    recon_x = to_float(data.val.images[:8])
    eval_gen = torch.Generator(device=device)

    # Everything at x = examples was logged before last.pt was saved; only later events are
    # orphans of the killed process (TensorBoard drops events at steps >= purge_step).
    # A fresh start in a folder with events (a job requeued after a kill before its first
    # checkpoint) drops the earlier start's curves the same way.
    purge = st["examples"] + 1 if resumed else (1 if any(run_dir.glob("events.out.tfevents.*")) else None)
    # (a finished run met again, say by a sweep's job that repeats another's values: nothing new
    # to log, where each meeting left an event file behind and rewrote the HParams row)
    writer = RunLogger(run_dir, enabled=cfg.logger.tensorboard and not (
        finished and hparams_logged(run_dir, st["examples"])), purge_step=purge)
    config_text = "```\n" + OmegaConf.to_yaml(plain_cfg) + "\n```"
    if resumed and _carried_on_otherwise(saved_under, plain_cfg):  # the text tab shows the settings from here on
        # (just past the checkpoint's step: a later resume from that checkpoint purges it with the rest)
        writer.text("config", config_text, st["examples"] + 1)
    if not resumed:
        writer.text("config", config_text)
        log.info("run directory: %s", run_dir)
        log.info("model: %s (%d parameters) on %s", type(model).__name__,
                 sum(p.numel() for p in model.parameters()), device)
        if type(model).__module__ == "__main__" or str(cfg.model._target_).startswith("__main__."):
            # (a notebook's class or function: told now, not at the first eval)
            log.warning("model._target_=%s is defined in the script or notebook that runs it: vaelab eval, resume "
                        "and reproduce, in processes of their own, cannot import it; define it in a module",
                        cfg.model._target_)

    # (model.hidden as built: null when model.size names the widths)
    hp_cfg = {**plain_cfg, "model": {**plain_cfg["model"], "hidden": list(getattr(model, "hidden", []) or []) or
                                     plain_cfg["model"].get("hidden")}}
    writer.hparams_start(hp_cfg, _compared_keys(run_dir), choices())  # replaces the row an earlier start wrote

    step_model = torch.compile(model, mode=t.compile_mode) if t.compile else model
    if t.compile:  # (the first steps wait for it, silently, and the epoch's img/s counts the wait)
        log.info("trainer.compile=true: torch.compile (mode=%s) compiles the model in the first steps, which takes "
                 "tens of seconds; the first epoch's time and img/s include it", t.compile_mode)
    # (autocast's weight cache would hand a graph tensors freed after capture)
    amp = (torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=not graphed) if t.amp == "bf16"
           else nullcontext())

    # Hot-loop settings as plain Python values: an OmegaConf read costs ~7 us, ~50 us a step.
    batch_size, log_every, grad_clip = t.batch_size, t.log_every, t.grad_clip
    recon, binarize = getattr(lcfg.recon, "value", lcfg.recon), data.binarize
    beta_max, warmup = lcfg.beta, lcfg.kl_warmup_steps

    # (loss, recon, kl, examples) sums of the epoch and of the log interval, on the device.
    # Fixed tensors for the whole run: a CUDA graph adds into them at fixed addresses.
    epoch_acc, log_acc = torch.zeros(4, device=device), torch.zeros(4, device=device)
    step = make_step(forward_loss(step_model, recon, amp, fused), model, opt, data.train.images, (epoch_acc, log_acc),
                     binarize=binarize, grad_clip=grad_clip)
    run_step = CudaGraphStep(step, opt, batch_size, device) if graphed else step

    stop_after = int(os.environ[STOP_AFTER_STEP]) if os.environ.get(STOP_AFTER_STEP, "").isdigit() else None

    def diverged(message: str) -> NonFiniteLoss:
        writer.hparams_end({}, st["examples"], failed=True)  # the HParams row's status; metrics stay blank
        writer.close()  # the curves up to here on disk, also when a sweep's process goes on
        # (resumed as it was, it replays the same steps to the same blow-up: how to go on, with a change)
        how = "carry it on" if ckpt_io.latest(ckpt_dir) is not None else "start it again"  # (carry_on's two commands)
        return NonFiniteLoss(f"{message}; the same settings diverge again there: {how} with others, e.g. "
                             f"{ckpt_io.carry_on(run_dir)} {ckpt_io.lower_lr(cfg.optim.lr)}")

    def save(path: Path) -> None:
        # Never replace a good checkpoint with blown-up weights (a Ctrl-C can come between a
        # step that overflowed and the next loss check).
        nonlocal last_good
        if not torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all():
            raise diverged(f"non-finite weights at step {st['step']}, not saved to {path.name}; "
                           f"last good checkpoint: {good_checkpoint()}")
        # Adam's moments too: a gradient whose square overflows (beyond ~1e19 in float32) leaves the
        # weights finite but exp_avg_sq infinite, which freezes those weights for good, also after a resume.
        moments = [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t) and t.is_floating_point()]
        if moments and not torch.stack([torch.isfinite(t).all() for t in moments]).all():
            raise diverged(f"non-finite Adam moments at step {st['step']} (a gradient overflowed), not saved to "
                           f"{path.name}; last good checkpoint: {good_checkpoint()}")
        stop.saving = True
        try:
            ckpt_io.save_atomic({"model": model.state_dict(), "optimizer": opt.state_dict(),
                                 "state": {**st, "data_rng": data_gen.get_state()},
                                 "rng": ckpt_io.rng_state(), "config": plain_cfg}, path)
            if path == last_path:
                last_good = (last_path, where_in_run())
        except OSError as e:
            complete = ckpt_io.latest(ckpt_dir)  # (last.pt, or best.pt written just before it failed)
            good = (f"checkpoints already there are intact (the last complete one is {complete})" if complete
                    else "it has no checkpoint yet")  # (it said "... are intact (none was complete)", review)
            raise SaveFailed(f"cannot write {path}: {e.strerror or e}; {good}; once {_once_writable(e)}: "
                             f"{ckpt_io.carry_on(run_dir)}") from None
        finally:
            stop.saving = False

    def check_finite(values: list[float], where: str, since: str | None = "log") -> None:
        """values: means of the steps since the last log point (since="log": the loss is read every
        log_every steps, the hot loop's only host sync, so name those steps), of the epoch's steps
        ("epoch"), or of the weights after the last step (None)."""
        if all(math.isfinite(v) for v in values):
            return
        first = st["step"] - math.ceil(st["pos"] / batch_size) + 1  # the epoch's first step
        if since == "log":  # (log points are multiples of log_every, and each epoch's end)
            first = max(first, (st["step"] - 1) // log_every * log_every + 1)
        elif since is None:
            first = st["step"]
        at = f"at step {first} ({where})" if first == st["step"] else \
            f"in steps {first}-{st['step']} ({where}: the loss is read every trainer.log_every={log_every} steps)"
        raise diverged(f"non-finite loss {values[0]} {at}; "
                       f"stopped without saving these weights; last good checkpoint: {good_checkpoint()}")

    def epoch_beta() -> float:
        """The mean beta of the epoch's training examples (its train_loss is recon + that beta x KL
        with a constant beta, about so during a KL warm-up): from the settings, or where they
        changed part-way through the epoch, the sum kept over its steps."""
        if st["beta_changed"]:
            return st["epoch_beta"] / n_train
        if not warmup:
            return beta_max
        steps = math.ceil(n_train / batch_size)
        last = n_train - (steps - 1) * batch_size  # (the epoch's last, short batch)
        first = st["step"] - steps
        total = sum(beta_at(s, beta_max, warmup) for s in range(first, st["step"])) * batch_size
        return (total - beta_at(st["step"] - 1, beta_max, warmup) * (batch_size - last)) / n_train

    def log_train(epoch: int) -> float:
        """The train/* point of the steps since the last one: their per-example means and, as
        train/loss mixes the betas of a KL warm-up, the mean beta they were taken with. Returns
        the loss."""
        v = log_acc.tolist()
        means = [s / v[3] for s in v[:3]]
        check_finite(means, f"epoch {epoch + 1}")
        mean_beta = st["log_beta"] / v[3] if warmup or st["beta_changed"] else beta_max
        writer.scalars({"loss": means[0], "recon": means[1], "kl": means[2], "beta": mean_beta},
                       st["examples"], prefix="train/")
        st["log_beta"] = 0.0
        log_acc.zero_()
        return means[0]

    # With MSE the numbers leave out the Gaussian's constant (losses.py), and a Bernoulli decoder
    # on grey levels is a cross-entropy, not a likelihood: neither is a -ELBO in nats.
    val_name = "-elbo" if recon == "bce" and binarize != "none" else "loss"
    # (mse: each epoch's line says so too; its numbers read as nats were off by the constant)
    units = "nats/example" if recon != "mse" else \
        f"nats/example less the constant {data.train.dim * MSE_NLL_CONST_PER_DIM:.2f}"
    # (the loss optimised, beside validation's recon + KL: one compared with the other looked like overfitting)
    def train_terms() -> str:  # (with a warm-up, the epoch's mean beta: review, it said the final one)
        beta = epoch_beta()
        if beta_max == 1 and not warmup and (not st["beta_changed"] or beta == 1):  # (a change of batches alone)
            return ""
        ramp = f", beta ramping up to {beta_max:g} over {warmup} steps" if warmup and beta < beta_max else ""
        return f" (recon + {beta:.3g} x KL{ramp})"
    if recon == "mse" and not resumed:
        log.info("loss.recon=mse: train and val losses leave out the Gaussian decoder's constant; add "
                 "%.2f nats for the -ELBO (vaelab eval does)", data.train.dim * MSE_NLL_CONST_PER_DIM)
    val = None
    with stop:
        for epoch in range(st["epoch"], t.epochs):
            lr = lr_at(cfg, epoch)
            for g in opt.param_groups:
                g["lr"] = lr
            model.train()
            if st["perm"] is None:  # a fresh epoch; otherwise finish the interrupted one
                st["perm"] = torch.randperm(n_train, generator=data_gen)
                st["pos"] = 0
                st["epoch_acc"] = torch.zeros(4)
                st["log_acc"] = torch.zeros(4)
                st["log_beta"] = 0.0  # sum of beta * batch over the steps in log_acc
                st["epoch_beta"], st["beta_changed"] = 0.0, False  # (the same over the epoch's steps)
            epoch_acc.copy_(st["epoch_acc"])
            log_acc.copy_(st["log_acc"])
            perm = st["perm"].to(device)
            t0, seen0 = time.perf_counter(), st["pos"]
            bar = tqdm(total=n_train, initial=st["pos"], desc=f"{job}epoch {epoch + 1}/{t.epochs}", unit="img",
                       leave=False, dynamic_ncols=True, **quiet(show_progress))
            for i in range(st["pos"], n_train, batch_size):
                idx = perm[i:i + batch_size]
                beta = beta_at(st["step"], beta_max, warmup)
                run_step(idx, beta)
                b = idx.shape[0]
                st["step"] += 1
                if st["step"] == stop_after and stop.signum is None and not (epoch + 1 == t.epochs
                                                                            and i + b >= n_train):
                    stop.signum = (STOP_AFTER_STEP, stop_after)  # (not at the run's last step: it ends there)
                st["examples"] += b
                st["pos"] = i + b
                st["log_beta"] += beta * b
                st["epoch_beta"] += beta * b
                bar.update(b)
                if st["step"] % log_every == 0:  # the loop's only host sync
                    bar.set_postfix(loss=f"{log_train(epoch):.2f}")  # the bar's own img/s is the rate
                if stop.signum is not None:
                    break
            bar.close()
            # (a copy to the host waits for the steps still queued on a GPU: up to log_every of
            # them would otherwise fall outside the epoch's time)
            st["epoch_acc"], st["log_acc"] = epoch_acc.to("cpu", copy=True), log_acc.to("cpu", copy=True)
            dt = time.perf_counter() - t0
            st["train_seconds"] += dt
            if stop.signum is not None and st["pos"] < n_train:
                save(last_path)
                writer.close()
                raise Interrupted(f"stopped by {stop.name()} at step {st['step']} "
                                  f"(epoch {epoch + 1}, {st['pos']}/{n_train} images); checkpoint: {last_path}; "
                                  f"continue with: vaelab resume {shlex.quote(str(run_dir))}")

            # --- end of epoch: validation, logging, pictures, checkpoints ---------------
            if st["log_acc"][3] > 0:  # the epoch's last steps, past its last multiple of log_every
                log_train(epoch)
                st["log_acc"] = torch.zeros(4)
            e = epoch_acc.tolist()
            train_means = {"loss": e[0] / e[3], "recon": e[1] / e[3], "kl": e[2] / e[3]}
            check_finite(list(train_means.values()), f"end of epoch {epoch + 1}", since="epoch")
            rate = (st["pos"] - seen0) / dt
            eval_gen.manual_seed(cfg.seed + 1)  # same noise every epoch: val numbers comparable
            val = elbo_stats(model, data.val.images, lcfg.recon, t.eval_batch_size, eval_gen)
            # The epoch's last steps can blow the weights up after the training means were summed.
            check_finite([val["nelbo"], val["recon"], val["kl"]], f"validation after epoch {epoch + 1}",
                         since=None)
            st["epoch"], st["perm"], st["pos"] = epoch + 1, None, 0
            x_ax = st["examples"]
            writer.scalars(train_means, x_ax, prefix="epoch/train_")
            writer.scalars({"loss": val["nelbo"], "recon": val["recon"], "kl": val["kl"]}, x_ax, prefix="epoch/val_")
            writer.scalars({"active_units": val["active_units"], "lr": lr, "samples_per_s": rate,
                            "epoch": epoch + 1, "rss_mib": _rss_mib()}, x_ax, prefix="epoch/")
            if cfg.logger.histograms:
                writer.histogram("latent/kl_per_dim", val["kl_per_dim"], x_ax)
            log.info("%sepoch %d/%d  train loss %.3f%s  val %s %.3f (recon %.3f, kl %.3f) %s  active %d/%d  "
                     "%.1f s, %.0f img/s", job, epoch + 1, t.epochs, train_means["loss"], train_terms(), val_name,
                     val["nelbo"], val["recon"], val["kl"], units, val["active_units"], cfg.latent_size, dt, rate)
            last_epoch = epoch + 1 == t.epochs
            numbered = (epoch + 1) % t.checkpoint_every == 0
            if (epoch + 1) % cfg.logger.images_every == 0 or last_epoch or numbered:
                _pictures(model, fixed_z, recon_x, writer, x_ax, sample_dir if (numbered or last_epoch) else None,
                          epoch + 1)
                # the histogram above loses which dimension is which; ~50 ms a chart (and matplotlib's
                # import, 0.45 s, once): at the epochs that keep sample PNGs, not every epoch
                if writer.enabled and cfg.logger.histograms and (numbered or last_epoch):
                    from vaelab.pictures import figure_to_tensor, kl_bars_figure  # (matplotlib: only here)

                    bars = kl_bars_figure(val["kl_per_dim"], val["mu_var"] > ACTIVE_THRESHOLD,
                                          "test" if data.val_is_test else "validation")
                    writer.image("latent/kl_by_dim", figure_to_tensor(bars), x_ax)
            st["train_loss"] = train_means["loss"]
            _append_line(run_dir / ckpt_io.EPOCHS, json.dumps({
                "epoch": epoch + 1, "step": st["step"], "examples_seen": x_ax,
                **{f"train_{k}": v for k, v in train_means.items()},
                "val_loss": val["nelbo"], "val_recon": val["recon"], "val_kl": val["kl"],
                "active_units": val["active_units"], "kl_per_dim": val["kl_per_dim"].tolist(),
                "mean_variance_per_dim": val["mu_var"].tolist(), "beta": epoch_beta(),
                "lr": lr, "epoch_seconds": dt, "samples_per_s": rate}))
            # The epoch's events on disk before any checkpoint that vouches for them (resume
            # falls back to best.pt when a kill came before the first last.pt).
            writer.flush()
            if val["nelbo"] < st["best_val"]:
                st["best_val"] = val["nelbo"]
                save(ckpt_dir / "best.pt")
            if numbered:
                save(ckpt_dir / f"epoch_{epoch + 1:04d}.pt")
            save(last_path)  # last, so a kill before this line replays the epoch exactly
            if stop.signum is not None and not last_epoch:
                writer.close()
                raise Interrupted(f"stopped by {stop.name()} after epoch {epoch + 1}; "
                                  f"checkpoint: {last_path}; continue with: vaelab resume {shlex.quote(str(run_dir))}")

    if val is None:  # resumed a finished run: report the stored weights
        eval_gen.manual_seed(cfg.seed + 1)
        val = elbo_stats(model, data.val.images, lcfg.recon, t.eval_batch_size, eval_gen)
    metrics = {
        "train_loss": st.get("train_loss", float("nan")),
        "val_loss": val["nelbo"], "val_recon": val["recon"], "val_kl": val["kl"],
        "active_units": val["active_units"], "latent_size": cfg.latent_size,
        "epochs": st["epoch"], "steps": st["step"], "examples_seen": st["examples"],
        "samples_per_s": st["examples"] / st["train_seconds"] if st["train_seconds"] else 0.0,
        "train_seconds": st["train_seconds"], "best_val_loss": st["best_val"],
        "units": units, "val_split": "test" if data.val_is_test else "val", "torch_threads": st["threads"],
        "data_digest": data.digest,
    }
    writer.hparams_end({} if finished and hparams_logged(run_dir, st["examples"]) else metrics, st["examples"])
    ckpt_io.write_text_atomic(run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    writer.close()
    log.info("%smetrics: %s", job,
             json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()}))
    if stop.signum is not None:  # asked during the last epoch, which it has finished: stop here
        raise Interrupted(f"stopped by {stop.name()} after its last epoch, {st['epoch']}: the "
                          f"run has finished training (metrics.json)"
                          + (f"; its end-of-training evaluation did not run: vaelab resume {shlex.quote(str(run_dir))} "
                             f"runs it" if t.final_eval else ""), finished=True)
    if t.final_eval and finished and not ckpt_io.final_eval_missing(run_dir):  # (as vaelab resume leaves it)
        log.info("its end-of-training evaluation is in %s", run_dir / "eval.json")
    elif t.final_eval:
        from vaelab.evaluate_run import evaluate_run
        # (the data gone since training began: it has trained, only its test numbers wait for the data)
        how = f"the run has finished training; to evaluate it: vaelab resume {shlex.quote(str(run_dir))} data.root=DIR,"
        try:
            evaluate_run(run_dir, k=t.final_eval_k, device=str(device), checkpoint="last", progress=show_progress,
                         how=how, job=job)
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (vaelab-train makes it one): the run itself is done
            raise Interrupted(f"stopped during the end-of-training evaluation of {run_dir}: the run has finished "
                              f"training (metrics.json); vaelab resume {shlex.quote(str(run_dir))} runs the "
                              f"evaluation", finished=True) from None
        except (ConfigError, ckpt_io.CheckpointError) as e:
            if not unsaid:  # a damaged config or checkpoint: the run's failure, as any other
                raise
            # train() from Python carried the run on under settings its saved config does not have
            # (it warned at the start): an evaluation of the saved config's model would not be this one's
            log.warning("%sthe end-of-training evaluation did not run: %s; once the saved config says what the run "
                        "trained with, vaelab resume %s runs it", job, e, shlex.quote(str(run_dir)))
    return metrics


# --- entry points --------------------------------------------------------------------------


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def hydra_main(cfg: DictConfig) -> float:
    """The Hydra app. Returns the final val loss, which sweepers minimise: the -ELBO in nats per
    example for a Bernoulli decoder on binarized data; otherwise the same sum with a cross-entropy
    on grey levels (bce) or without the Gaussian's constant (mse), which is not a -ELBO."""
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    # `vaelab resume SWEEP_DIR` launched this sweep again, with hydra.output_subdir=null: a job
    # that began then carries on from its own saved config (_carry_on).
    continued = os.environ.get(SWEEP_CONTINUED) == "1"
    # (a job with checkpoints but no saved config began too: its config was deleted, see _carry_on)
    began = continued and ((run_dir / ".hydra" / "config.yaml").is_file()
                           or ckpt_io.latest(run_dir / "checkpoints") is not None)
    if continued and not began:  # a job that never started: its config, as Hydra saves it
        save_job_config(cfg, run_dir)
    sweep_job = not continued and hc.mode.name == "MULTIRUN"
    if not began and not sweep_job:
        pin_environment(run_dir, cfg)  # the saved config must not depend on this shell's variables
    try:
        # (a primary config of one's own skips vaelab-train's pre-flight, which checks the files of
        # groups of one's own: Hydra has composed it, and progress: 2 in it read as true)
        if not began and any(s.schema == "file" and Path(s.path) != CONF_DIR for s in hc.runtime.config_sources):
            given = OmegaConf.to_container(hc.overrides, resolve=False)  # (as given: a saved config's re-run gets
            # ++hydra.sweep.subdir=${...hydra.job.num}, which a single run cannot resolve)
            line = integer_as_bool_in_files(hc.job.config_name, [*given["hydra"], *given["task"]])
            if line:
                raise ConfigError(line)
        if began:
            metrics = _carry_on(run_dir)
        elif sweep_job:
            metrics = _train_sweep_job(from_launch_folder(typed(cfg), hc), run_dir,
                                       prepare=lambda: pin_environment(run_dir, cfg))
        else:
            metrics = train(from_launch_folder(typed(cfg), hc), run_dir)
    except (ConfigError, DataError, ckpt_io.CheckpointError) as e:  # bad input: one line, no traceback
        print(f"vaelab-train: error: {e}", file=sys.stderr)
        if not began and remove_if_never_started(run_dir, hc):
            # A sweep whose first job is refused stops there: its folder would hold only Hydra's
            # multirun.yaml and list in `vaelab compare` as a sweep of no jobs.
            # (One that was there before, the current folder say, keeps all but that file.)
            sweep = sweep_dir(hc) if hc.mode.name == "MULTIRUN" else None
            if sweep is not None and sweep.is_dir() and "multirun.yaml" in (names := {p.name for p in sweep.iterdir()}):
                if made_for_this_launch(sweep) and names <= SWEEP_OWN_FILES:
                    remove_sweep(sweep, hc.runtime.cwd)
                elif not {n for n in names - SWEEP_OWN_FILES if not n.startswith(".")}:
                    for name in SWEEP_OWN_FILES:
                        (sweep / name).unlink(missing_ok=True)
        sys.exit(2)
    except SaveFailed as e:
        print(f"vaelab-train: error: {e}", file=sys.stderr)
        sys.exit(1)
    except NonFiniteLoss as e:
        if not _console(log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s", (e,), None)):  # (train.log has it)
            print(f"vaelab-train: error: {e}", file=sys.stderr)
        if hc.mode.name == "MULTIRUN":
            # The rest of the sweep goes on. +inf ranks this job last for a sweeper that
            # minimises; Optuna refuses nan and would end the whole study on it.
            return float("inf")
        sys.exit(1)
    except KeyboardInterrupt:  # a Ctrl-C before train() answers one itself (the data loading, say)
        removed = None if began or hc.mode.name == "MULTIRUN" else remove_if_never_started(run_dir, hc)
        if removed is None:
            raise  # (_run_hydra says what a run keeps; a sweep's folders are what vaelab resume carries on)
        leaving_after_a_stop()
        print(f"vaelab-train: interrupted before {run_dir} began training; " +
              ("its folder, made for it and holding nothing else, is removed" if removed == "folder" else
               "what it had written there (.hydra/'s files, train.log) is removed"), file=sys.stderr)
        sys.exit(130)
    except Interrupted:  # (train() has logged how it stopped)
        leaving_after_a_stop()
        # (once a sweep: another job of it, running beside this one in joblib's workers, may have said it)
        if hc.mode.name == "MULTIRUN" and ckpt_io.first_to_tell_stop(sweep_dir(hc)):
            if not str(hc.sweeper.get("_target_", "")).endswith(".BasicSweeper"):
                # (vaelab resume SWEEP_DIR refuses a study: its sweeper would draw new trials)
                log.warning("the study stops here: trials not drawn yet did not run; the stopped trial goes on with "
                            "the command above, a study goes on only as a new one")
            else:
                log.warning("the sweep stops here: jobs that had not started did not run; carry the whole sweep on "
                            "with: vaelab resume %s", shlex.quote(str(sweep_dir(hc))))
        sys.exit(130)  # Ctrl-C / SIGTERM stop the whole sweep, not only the job in progress
    except Exception:  # a bug in a model of one's own, say: its traceback, without a folder that would list
        if not began and hc.mode.name != "MULTIRUN":  # as an unfinished run (a sweep's jobs: as for Ctrl-C)
            remove_if_never_started(run_dir, hc)
        raise
    return metrics["val_loss"]


def _train_sweep_job(cfg: DictConfig, run_dir: Path, prepare) -> dict:
    """train() for a job of a sweep, in a folder that another job of it may be training now: the
    same folder name, as parallel Optuna trials that drew the same values get. It waits for that
    one, then looks at what it left: a run with these settings is reported as a later
    duplicate's is (nothing to do), one with others is refused. The look and the start are not
    one step (the other job takes the folder only when its train() starts, after Hydra has set the
    job up): a job that took it in between is waited for in turn. `prepare()`: called before
    train(), once the folder is free."""
    while True:
        with ckpt_io.only_process(run_dir, waiting=lambda: log.info(
                "another process is training %s now: waiting for it to finish (Ctrl-C stops waiting)", run_dir)):
            pass
        clash = another_jobs_run(cfg, run_dir)
        if clash:
            print(f"vaelab-train: error: {clash}", file=sys.stderr)
            sys.exit(2)  # the sweep's folder names are broken: the jobs after this one would meet it too
        state, _, stopped = ckpt_io.run_state(run_dir)
        diverged_under = (stopped or {}).get("config") if state == "diverged" else None
        if isinstance(diverged_under, dict) and not _carried_on_otherwise(diverged_under, to_plain(cfg)):
            # an Optuna trial that drew a diverged run's values: trained again, it would replay the same
            # steps to the same blow-up (review: it did, at each such draw). Not a job of other values
            # whose folder name is the same (a hydra.sweep.subdir of one's own): it trains as before
            log.warning("%s diverged earlier with these values: reported as it was (+inf), not trained again",
                        run_dir.name)
            return {"val_loss": float("inf")}
        prepare()
        try:
            return train(cfg, run_dir)
        except ckpt_io.RunInUse:
            continue


def _carry_on(run_dir: Path) -> dict:
    """A job of a sweep that `vaelab resume SWEEP_DIR` carries on, whose run began earlier: from
    its own saved config (`vaelab resume JOB trainer.epochs=N` may have changed it since), a
    run that stopped continues from its checkpoints and one that ended is left as it is, with
    the result its job returned then (a finished run's val loss, +inf for a diverged one): a
    diverged run resumed from its last good checkpoint would replay the same steps to the same
    blow-up. A finished run whose end-of-training evaluation was cut short gets it now."""
    from vaelab.workflow import carried_on_config, finish_evaluation, n_epochs, no_saved_config, record_unrecorded

    if not (run_dir / ".hydra" / "config.yaml").is_file():  # not the sweep's config in its place: the job's
        log.warning("%s; it is left as it is", no_saved_config(run_dir))  # own changes (resume KEY=VALUE) stay
        return {"val_loss": float("inf")}
    cfg = carried_on_config(run_dir)
    state, metrics, stopped = ckpt_io.run_state(run_dir)
    if state == "diverged":
        again = (f"to try it again with other values: vaelab resume {shlex.quote(str(run_dir))} KEY=VALUE"
                 if ckpt_io.latest(run_dir / "checkpoints") else
                 "it diverged before its first checkpoint: to try other values, sweep them anew")
        log.warning("%s diverged earlier and is left as it is (%s); %s", run_dir.name,
                    stopped.get("reason", "non-finite loss"), again)
        return {"val_loss": float("inf")}
    if state != "done" or not isinstance(metrics.get("val_loss"), (int, float)) \
            or metrics.get("epochs", 0) < cfg.trainer.epochs:
        # (its saved config changed with no record of it, as `vaelab resume JOB` would say and record: review)
        return train(cfg, run_dir, on_start=record_unrecorded(run_dir, cfg))
    if not (cfg.trainer.final_eval and ckpt_io.final_eval_missing(run_dir)):  # (else finish_evaluation says why)
        log.info("%s finished earlier (%s, val loss %.4f) and is left as it is", run_dir.name,
                 n_epochs(metrics["epochs"]), metrics["val_loss"])
    try:
        from vaelab.train_cli import in_loky_worker
        with ckpt_io.only_process(run_dir):  # (not while its own process is at that evaluation)
            finish_evaluation(run_dir, cfg, say=log.info, progress=cfg.trainer.progress and not in_loky_worker(),
                              job=f"{run_dir.name} ")
    except (ConfigError, DataError, ckpt_io.CheckpointError, OSError) as e:  # the other jobs go on
        log.warning("%s: its end-of-training evaluation cannot run (%s); its training numbers stand", run_dir.name,
                    e)
    return metrics


# Registered on import, not in main(): sweep jobs resolve their folder name in worker
# processes (joblib, submitit) that import this module but never run main().
OmegaConf.register_new_resolver("vaelab_job_name", job_name, replace=True)


if __name__ == "__main__":
    # `python -m vaelab.train`: vaelab-train's own entry point. Launchers which pickle the task
    # (joblib, submitit, Ray) then refer to vaelab.train.hydra_main instead of copying __main__.
    from vaelab.train_cli import main

    main()
