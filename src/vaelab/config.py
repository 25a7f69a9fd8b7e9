"""Every configuration schema of vaelab, in one file.

The dataclasses give the *types* (and `MISSING` where a value must come from YAML); the
YAML files under `conf/` give the *values*. Because the schemas are registered in Hydra's
ConfigStore and `conf/config.yaml` lists `config_schema` first in its defaults, a typo or
a wrong type fails when the config is composed, before any data is loaded.

Value checks that a type cannot express (latent_size > 0, beta >= 0, an available
device, ...) live in `validate()`, which runs right after composition.
"""
from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, ListConfig, OmegaConf

# conf/ sits at the repository root (see STYLE.md): there in a checkout or an editable install;
# a wheel carries it as vaelab/conf (pyproject.toml).
_HERE = Path(__file__).resolve().parent
CONF_DIR = next((d for d in (_HERE / "conf", _HERE.parents[1] / "conf") if (d / "config.yaml").is_file()),
                _HERE.parents[1] / "conf")


class ConfigError(ValueError):
    """A config value that composes but makes no sense. Its message is one line for the user."""


# --- enums: OmegaConf rejects any other value at compose time ------------------------------


class Choice(str, Enum):
    """A setting with a fixed set of values. Each member's name is its value, so OmegaConf
    (which matches names) and the code (which compares strings) agree; str() and f-strings give
    the value on every Python (3.11 would write "Recon.mse")."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class Recon(Choice):
    mse = "mse"  # seed script: squared error summed over pixels (Gaussian, sigma^2 = 1/2)
    bce = "bce"  # Bernoulli decoder: binary cross-entropy summed over pixels


class Binarize(Choice):
    none = "none"  # grey levels in [0, 1]
    dynamic = "dynamic"  # fresh Bernoulli draw of every training batch (Burda et al. 2016)
    static = "static"  # one Bernoulli draw per split, fixed by the seed


class ModelSize(Choice):
    small = "small"
    base = "base"
    large = "large"


SIZES = {"small": [256], "base": [512], "large": [1024, 512]}  # MLPVAE's hidden widths of each model.size
MLP_TARGET = "vaelab.models.MLPVAE"


class LinearImpl(Choice):
    aten = "aten"  # F.linear: MKL on the CPU, cuBLAS on a GPU
    onednn = "onednn"  # CPU float32 products on oneDNN (models/linear.py); elsewhere as aten


class Amp(Choice):
    off = "off"
    bf16 = "bf16"


class Activation(Choice):  # models/mlp.py builds each (a test keeps the two lists equal)
    relu = "relu"
    tanh = "tanh"
    gelu = "gelu"
    elu = "elu"


class ModelInit(Choice):  # models/mlp.py
    torch = "torch"  # PyTorch's nn.Linear default, the seed script's: weights and biases U(+-1/sqrt(fan_in))
    glorot = "glorot"  # Glorot & Bengio (2010) uniform weights, zero biases: Burda et al. (2016)'s


class LossImpl(Choice):  # see LossConfig.impl
    auto = "auto"
    torch = "torch"
    triton = "triton"


class AdamImpl(Choice):  # see OptimConfig.impl
    auto = "auto"
    fused = "fused"
    flat = "flat"
    triton = "triton"
    foreach = "foreach"
    forloop = "forloop"


class LRSchedule(Choice):
    constant = "constant"
    iwae = "iwae"  # Burda et al.: lr * 10^(-i/7) for 3^i epochs, i = 0..7


# --- groups -----------------------------------------------------------------------------


@dataclass
class DataConfig:
    name: str = "mnist"
    # Relative paths are relative to the directory vaelab-train is started from.
    root: str = "${oc.env:VAELAB_DATA,data}"
    download: bool = True  # try torchvision's download when the files are missing
    val_size: int = 5000  # carved out of the 60k training images; 0 = train on all 60k
    split_seed: int = 0  # fixes the train/val split and the binarized val/test draws, independently of `seed`
    binarize: Binarize = Binarize.none


@dataclass
class ModelConfig:
    _target_: str = MLP_TARGET
    size: ModelSize = ModelSize.base  # named widths, SIZES
    hidden: Optional[List[int]] = None  # explicit widths; when set, `size` is ignored
    activation: Activation = Activation.relu
    latent_size: int = "${latent_size}"  # type: ignore[assignment]
    # Where the CPU float32 matrix products run. The same arithmetic either way (outputs agree
    # to float rounding); onednn made the seed model's steps 14-17% faster on the 2-core
    # host in busy minutes and left them even in quiet ones (benchmarks/README.md).
    # Products under 4 M multiply-adds stay on MKL even so (models/linear.py).
    linear: LinearImpl = LinearImpl.onednn
    init: ModelInit = ModelInit.torch  # the weights a run starts from
    # A model of one's own (model._target_=mypkg.ConvVAE): its constructor's own arguments,
    # `+model.kwargs.channels=32` on the command line. The five settings above go only to a
    # constructor that takes them (build.build_model).
    kwargs: Dict[str, Any] = field(default_factory=dict)


@dataclass
class LossConfig:
    recon: Recon = Recon.mse
    beta: float = 1.0
    kl_warmup_steps: int = 0  # beta ramps linearly from 0 over this many steps; 0 = off
    # How the training step computes it. torch: losses.py, as PyTorch ops. triton
    # (vaelab.fused_loss): the reparameterisation, the KL and the reconstruction term, forward
    # and backward, as four Triton kernels instead of ~40 small ones (CUDA only, float32, no
    # torch.compile); the same arithmetic, differing from torch by float rounding. auto
    # (default): triton where the step is a CUDA graph (trainer.cuda_graph on a GPU), in float32,
    # not compiled, for a model that samples through VAE.forward, and the kernels build there
    # (the seed model's graphed step 197-208 -> 155-162 us on an H200); torch otherwise, and on the CPU.
    impl: LossImpl = LossImpl.auto


@dataclass
class OptimConfig:
    name: str = "adam"
    lr: float = 1e-3
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0
    # Adam implementation, all the same update rule, differing only by float rounding.
    # fused: one kernel per step instead of ~10 passes over the parameters (1.6x faster steps
    # on CPU for the seed model); foreach on devices without a fused kernel. flat
    # (vaelab.optim.FlatAdam): the parameters as one tensor and the update as whole-tensor
    # kernels, which fill a large GPU where fused Adam's fixed-size blocks use a fraction of
    # it (the seed model trained 10% faster on an H200), but more launches (slower eager on a
    # GPU) and passes (1.5x slower steps on CPU). triton: flat Adam's update as one Triton
    # kernel, one pass over the parameters instead of ~17 (CUDA only). auto (default): triton
    # when the step is a CUDA graph (trainer.cuda_graph on a GPU) and Triton can run there,
    # flat in a graph otherwise, fused outside one.
    impl: AdamImpl = AdamImpl.auto
    schedule: LRSchedule = LRSchedule.constant


@dataclass
class TrainerConfig:
    epochs: int = 20
    batch_size: int = 128
    eval_batch_size: int = 2000
    grad_clip: float = 0.0  # max global grad norm; 0 = off
    checkpoint_every: int = 10  # epochs between numbered checkpoints (last.pt is every epoch)
    log_every: int = 50  # steps between scalar logs (the only host syncs of the hot loop)
    deterministic: bool = False  # torch.use_deterministic_algorithms
    flush_denormal: bool = True  # CPU: treat subnormal floats as zero (see train.py)
    compile: bool = False  # torch.compile the model
    # torch.compile mode; "reduce-overhead" and "max-autotune" record CUDA graphs of the model
    # alone, so on CUDA they need cuda_graph=false (which graphs the whole step). On the 2-core
    # CPU compile did not pay.
    compile_mode: str = "default"
    amp: Amp = Amp.off  # bf16 autocast changes the numbers, so it is opt-in
    # On a CUDA device, replay each full-size training step as one CUDA graph (train.py's
    # CudaGraphStep): one launch instead of ~75, 8x the eager step's speed for the seed model on
    # an H200; the same arithmetic up to float rounding (optim.impl=auto is flat Adam in a graph,
    # fused Adam outside one). Ignored on other devices.
    cuda_graph: bool = True
    # On a CUDA device, run two steps of a throwaway copy of the model in a thread while the data
    # loads (train.py's warm_up): the kernels and cuBLAS then load there, not in epoch 1. The
    # same numbers either way. Ignored on other devices.
    cuda_warmup: bool = True
    num_samples: int = 64  # size of the fixed-noise sample grid
    progress: bool = True  # tqdm bars
    final_eval: bool = True  # run `vaelab eval` on the test split when training ends
    final_eval_k: int = 100  # importance samples for that automatic eval
    resume: bool = True  # continue from checkpoints/last.pt if the run directory has one


@dataclass
class LoggerConfig:
    tensorboard: bool = True
    images_every: int = 1  # epochs between sample/reconstruction grids
    histograms: bool = True


@dataclass
class Config:
    name: str = "default"  # experiment name: outputs/runs/<name>/<timestamp>
    latent_size: int = 32
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


@functools.cache
def hydra_section() -> dict:
    """conf/config.yaml's hydra: section, unresolved (folders with their ${now:...})."""
    return OmegaConf.to_container(OmegaConf.load(CONF_DIR / "config.yaml").hydra, resolve=False)


LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's job logging, as train.log has it


def register_configs() -> None:
    cs = ConfigStore.instance()
    # One schema node types the whole tree, groups included: conf/config.yaml lists it first.
    cs.store(name="config_schema", node=Config)


def compose_config(overrides: list[str] | tuple = (), config_dir: str | Path | None = None) -> DictConfig:
    """The config vaelab-train would run with these overrides, typed, for use from Python:
    `train(compose_config(["latent_size=16"]), "runs/mine")`. `config_dir`: a folder of config
    groups of one's own (experiment/, model/, ...), searched after conf/, as vaelab-train
    --config-dir searches it; or give hydra.searchpath=[...] among the overrides, not both."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if isinstance(overrides, str):  # (iterated, a string is its characters: "Error parsing override 'l'")
        raise ConfigError(f"overrides: a list of KEY=VALUE strings, as in [{overrides!r}], not one string")
    wrong = next((o for o in overrides if not isinstance(o, str)), "")
    if wrong != "":  # (3 or None: an AttributeError from deep in the checks, review)
        raise ConfigError(f"overrides: a list of KEY=VALUE strings; {wrong!r} is not a string")
    register_configs()
    extra = []
    if config_dir is not None:
        if not Path(config_dir).is_dir():
            raise ConfigError(f"config_dir={config_dir}: no such folder")
        if any(o.split("=", 1)[0].lstrip("+") == "hydra.searchpath" for o in overrides):
            raise ConfigError("config_dir and hydra.searchpath: give one (Hydra keeps the first search path only)")
        extra = [f"hydra.searchpath=[file://{Path(config_dir).resolve()}]"]
    flags = [o for o in overrides if str(o).startswith("-")]
    if flags:
        raise ConfigError(f"{flags[0]}: compose_config takes settings (KEY=VALUE), not vaelab-train's flags")
    line = integer_as_bool(overrides)
    if line:
        raise ConfigError(line)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            composed = compose("config", overrides=[*extra, *overrides])
            from vaelab.cli_errors import _deleted_key_error

            # (~latent_size: Hydra deletes it and the schema's default stands in; vaelab-train refuses it, review)
            line = _deleted_key_error(composed, list(overrides))
            if line:
                raise ConfigError(line)
            cfg = typed(composed)
            line = integer_as_bool_in_files("config", [*extra, *overrides]) if extra or any(
                str(o).split("=", 1)[0].lstrip("+") == "hydra.searchpath" for o in overrides) else None
        if line:  # (progress: 2 in a file of one's own, which composing took for true)
            raise ConfigError(line)
        _check_resolves(cfg)  # (latent_size=${nosuch}: one line now, not OmegaConf's when a key is read)
        validate(cfg, here=False)  # (latent_size=0 too: at compose time, not at train(); here=False: the
        return cfg                 # device's accelerator is train()'s to check, on the machine it trains on)
    except ConfigError:
        raise
    except Exception:
        # Hydra's or OmegaConf's own words ("Could not override 'latent_sizee'. To append to your
        # config use +latent_sizee=16", the reason in __cause__): vaelab-train's one line instead.
        from vaelab.cli_errors import precheck

        line = precheck([*overrides, *(["--config-dir", str(config_dir)] if config_dir is not None else [])])
        if line is None:
            raise
        # (a sweep's values: vaelab-train's -m has no counterpart here)
        line = line.replace("add -m (--multirun) to run one job per value", "compose one config per value")
        raise ConfigError(line) from None
    finally:
        GlobalHydra.instance().clear()


# --- value checks ------------------------------------------------------------------------

_DEVICE_RE = re.compile(r"(auto|cpu|mps|cuda(:\d+)?)\Z")  # (with match: \Z, as $ also takes a last "\n")
DEVICES = "auto, cpu, cuda, cuda:N, mps"
_COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
_FLOAT32_TINY = 2.0 ** -126  # torch.finfo(torch.float32).tiny, 1.18e-38 (torch is not imported here)
_FLOAT32_SUBNORMAL = 2.0 ** -149  # float32's smallest subnormal number, 1.4e-45


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value}: {allowed}")


def _number(item: Any) -> bool:
    """A list setting's item is a number: OmegaConf checks a List[float]'s items that are values,
    but not one that is a list or a mapping ([[0.9], 0.99]), which then failed in a comparison
    with a TypeError's traceback (review)."""
    return isinstance(item, (int, float))


def _shown(items) -> list:
    return OmegaConf.to_container(items) if isinstance(items, (DictConfig, ListConfig)) else list(items)


def _check_resolves(cfg: DictConfig) -> None:
    """Every ${...} in the config resolves: one line naming the key, not OmegaConf's traceback
    from the first check that reads it (latent_size=${missing}, name=${oc.env:UNSET})."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        raw = OmegaConf.to_container(cfg, resolve=False)
        for part in re.findall(r"[^.\[\]]+", key):  # optim.betas[1]: a list's item
            if isinstance(raw, list) and part.isdigit() and int(part) < len(raw):
                raw = raw[int(part)]
            else:
                raw = raw.get(part) if isinstance(raw, dict) else None
        if "${hydra:" in str(raw):  # (Hydra's resolver works inside a job only, after these checks)
            raise ConfigError(f"{key}={raw}: ${{hydra:...}} cannot be used in vaelab's settings, which are checked "
                              f"before Hydra starts; write the value out") from None
        why = str(getattr(e, "msg", None) or e).strip().splitlines()[0]
        raise ConfigError(f"{key}={raw}: cannot be resolved ({why})") from None


def validate(cfg: DictConfig, here: bool = True) -> None:
    """Reject values that compose but cannot work. Raises ConfigError with one line.
    here=False leaves out what depends on this machine (the device's accelerator): a saved run
    read to evaluate it, or to resume it with device=... overridden, on another machine."""
    _check_resolves(cfg)
    _check(cfg.latent_size >= 1, "latent_size", cfg.latent_size, "must be an integer >= 1")
    _check(cfg.latent_size < 2**31, "latent_size", cfg.latent_size, "too large: must be < 2**31")
    _check(cfg.model.latent_size == cfg.latent_size, "model.latent_size", cfg.model.latent_size,
           f"must equal latent_size ({cfg.latent_size}), which it follows: "
           f"set latent_size={cfg.model.latent_size} instead")
    _check(0 <= cfg.loss.beta < math.inf, "loss.beta", cfg.loss.beta,
           "must be a finite number >= 0 (0 turns the KL term off)")
    _check(cfg.loss.kl_warmup_steps >= 0, "loss.kl_warmup_steps", cfg.loss.kl_warmup_steps, "must be >= 0")
    for key, value, clash in (("trainer.amp", cfg.trainer.amp, "bf16"), ("trainer.compile", cfg.trainer.compile, True)):
        _check(not (cfg.loss.impl == "triton" and value == clash), "loss.impl", cfg.loss.impl,
               f"its kernels are float32 PyTorch functions, not for {key}={str(clash).lower()}: use loss.impl=torch "
               f"with it")
    _check(0 < cfg.optim.lr < math.inf, "optim.lr", cfg.optim.lr, "must be a finite number > 0")
    _check(0 < cfg.optim.eps < math.inf, "optim.eps", cfg.optim.eps, "must be a finite number > 0")
    _check(0 <= cfg.optim.weight_decay < math.inf, "optim.weight_decay", cfg.optim.weight_decay,
           "must be a finite number >= 0")
    for key in ("seed", "data.split_seed"):  # what torch.manual_seed and NumPy accept
        _check(0 <= OmegaConf.select(cfg, key) < 2**32, key, OmegaConf.select(cfg, key), "must be in [0, 2**32)")
    _check(cfg.optim.name == "adam", "optim.name", cfg.optim.name, "allowed: adam")
    _check(len(cfg.optim.betas) == 2 and all(_number(b) and 0 <= b < 1 for b in cfg.optim.betas),
           "optim.betas", _shown(cfg.optim.betas), "must be two numbers in [0, 1)")
    t = cfg.trainer
    _check(t.epochs >= 1, "trainer.epochs", t.epochs, "must be >= 1")
    _check(t.epochs < 2**31, "trainer.epochs", t.epochs, "too large: must be < 2**31")  # (an extra 0 or 20: review)
    _check(t.batch_size >= 1, "trainer.batch_size", t.batch_size, "must be >= 1")
    _check(t.eval_batch_size >= 1, "trainer.eval_batch_size", t.eval_batch_size, "must be >= 1")
    _check(0 <= t.grad_clip < math.inf, "trainer.grad_clip", t.grad_clip, "must be a finite number >= 0 (0 = off)")
    _check(t.checkpoint_every >= 1, "trainer.checkpoint_every", t.checkpoint_every, "must be >= 1")
    _check(t.log_every >= 1, "trainer.log_every", t.log_every, "must be >= 1")
    _check(cfg.logger.images_every >= 1, "logger.images_every", cfg.logger.images_every, "must be >= 1")
    _check(t.compile_mode in _COMPILE_MODES, "trainer.compile_mode", t.compile_mode,
           f"allowed: {', '.join(_COMPILE_MODES)}")
    _check(t.num_samples >= 1, "trainer.num_samples", t.num_samples,
           "must be >= 1 (the images of the sample grid drawn each epoch)")
    _check(1 <= t.final_eval_k <= 10**6, "trainer.final_eval_k", t.final_eval_k,
           "must be in [1, 10**6] (as vaelab eval --k)")
    _check(cfg.data.val_size >= 0, "data.val_size", cfg.data.val_size, "must be >= 0")
    _check(cfg.data.name == "mnist", "data.name", cfg.data.name, "allowed: mnist")
    # `name` is a folder under outputs/ (outputs/runs/<name>/...): one plain folder name
    _check(bool(re.fullmatch(r"[\w.=,+-]+", cfg.name)) and cfg.name not in (".", ".."), "name", cfg.name,
           "one folder name: letters, digits and _ . = , + - (no '/', not '..')")
    m = cfg.model
    if m.hidden is not None:
        _check(len(m.hidden) >= 1 and all(_number(h) and h >= 1 for h in m.hidden), "model.hidden", _shown(m.hidden),
               "must be a non-empty list of positive widths, e.g. [1024,512]")
        _check(all(h < 2**31 for h in m.hidden), "model.hidden", list(m.hidden), "too large: widths must be < 2**31")
    _check(bool(_DEVICE_RE.match(cfg.device)), "device", cfg.device, f"allowed: {DEVICES}")
    if not here:
        return
    # What fits this machine's memory: a saved run (here=False) that trained with more stays readable.
    _check(t.num_samples <= 10_000, "trainer.num_samples", t.num_samples,
           "must be in [1, 10000] (the images of the sample grid drawn each epoch)")
    device = resolve_device(cfg.device)  # raises ConfigError when the accelerator is absent
    # Adam adds eps in float32, flat Adam as eps * (1 - beta1^t) (>= eps * (1 - beta1)): below
    # float32's smallest subnormal that is 0, and so is a subnormal one where trainer.flush_denormal
    # flushes them (CPU); then a zero gradient is 0/0 and the run "diverges" at its first steps.
    # (Here, not for a saved run read to evaluate it: eps no longer matters to it.)
    smallest = _FLOAT32_TINY if t.flush_denormal and device.type == "cpu" else _FLOAT32_SUBNORMAL
    eps_floor = smallest / (1 - cfg.optim.betas[0])
    _check(cfg.optim.eps >= eps_floor, "optim.eps", cfg.optim.eps,
           f"must be >= {eps_floor:.3g} here: float32 loses a smaller eps in Adam's update"
           + (" (trainer.flush_denormal=true on the CPU flushes subnormal numbers)" if smallest == _FLOAT32_TINY
              else ""))
    # reduce-overhead and max-autotune both record inductor's own CUDA graphs (triton.cudagraphs),
    # which cannot nest inside the capture of the whole step.
    _check(not (device.type == "cuda" and t.cuda_graph and t.compile and t.compile_mode != "default"),
           "trainer.compile_mode", t.compile_mode, f"{t.compile_mode} records CUDA graphs of the model itself, "
           "and trainer.cuda_graph=true (the default) already replays the whole step as one: use "
           "trainer.compile_mode=default, or trainer.cuda_graph=false")
    _check(not (cfg.optim.impl == "triton" and device.type != "cuda"), "optim.impl", cfg.optim.impl,
           f"the Triton kernel needs a CUDA device (device={cfg.device} is {device.type} here); "
           "optim.impl=flat is the same update in torch kernels")
    _check(not (cfg.loss.impl == "triton" and device.type != "cuda"), "loss.impl", cfg.loss.impl,
           f"its Triton kernels need a CUDA device (device={cfg.device} is {device.type} here); "
           "loss.impl=torch is the same loss in torch kernels")


def resolve_device(name: str, given_as: str = "device="):
    """'auto' -> cuda if present, else mps, else cpu. An absent accelerator is a ConfigError,
    which names the setting as the user gave it: `device=` (a config), `--device ` (eval, sample)."""
    import torch

    if not _DEVICE_RE.match(str(name)):  # (from Python: torch's "Expected one of cpu, cuda, ipu, xpu, ...")
        raise ConfigError(f"{given_as}{name}: allowed: {DEVICES}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"{given_as}{name}: no CUDA GPU is visible here; use {given_as}cpu or {given_as}auto")
        idx = int(name.split(":")[1]) if ":" in name else 0
        if idx >= torch.cuda.device_count():
            raise ConfigError(f"{given_as}{name}: only {torch.cuda.device_count()} CUDA device(s) visible "
                              f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"{given_as}mps: Apple MPS is not available here; use {given_as}cpu or {given_as}auto")
    return torch.device(name)


# Keys every saved trainer section has had: a hand-written partial one rarely lists them all.
_SAVED_TRAINER = {"epochs", "batch_size", "eval_batch_size", "checkpoint_every", "log_every"}
_SAVED_LOSS = {"recon", "beta", "kl_warmup_steps"}  # (likewise, a saved loss section's)


def typed(cfg: DictConfig | dict) -> DictConfig:
    """Merge a plain or loaded config onto the schema, so a config read back from a run
    directory (or given with --config-dir) is type-checked like a freshly composed one."""
    schema = OmegaConf.structured(Config)
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=False)
    cfg = {k: v for k, v in dict(cfg).items() if k not in ("defaults", "hydra")}
    _integers_as_bools(cfg)  # (a saved config.yaml edited by hand: trainer.progress: 2)
    return OmegaConf.merge(schema, as_trained(cfg))


def as_trained(cfg: dict) -> dict:
    """A saved config (plain) with the values its run trained with for the settings added since,
    whose defaults would run it otherwise: typed() reads it so (reproduce, resume, eval, -cd), and
    vaelab compare lists it so."""
    cfg = dict(cfg)
    model = cfg.get("model")
    if isinstance(model, dict) and "_target_" in model and "linear" not in model:
        # Saved before model.linear existed, when every product ran on MKL: keep it so, and
        # `vaelab reproduce` / `vaelab resume` of such a run stay bit-identical to it.
        cfg["model"] = {**model, "linear": "aten"}
    trainer = cfg.get("trainer")
    if isinstance(trainer, dict) and _SAVED_TRAINER <= trainer.keys() and "cuda_graph" not in trainer:
        # A whole trainer section saved before trainer.cuda_graph existed, when every step ran
        # eagerly: a GPU re-run (reproduce, resume, -cd) runs as it did.
        cfg["trainer"] = {**trainer, "cuda_graph": False}
    loss = cfg.get("loss")
    if isinstance(loss, dict) and _SAVED_LOSS <= loss.keys() and "impl" not in loss:
        # A whole loss section saved before loss.impl existed (871301a), when the loss was torch's
        # ops: not auto's Triton kernels in a GPU re-run, which differ by rounding (review)
        cfg["loss"] = {**loss, "impl": "torch"}
    return cfg


def on_schema(cfg: DictConfig) -> DictConfig:
    """`cfg` typed by the schema, as composing types it: train() given a plain config (say
    OmegaConf.create of a dict) checks its enums and types too, not only validate()'s ranges.
    A key it leaves out takes the schema's default, as an override left out does (not typed()'s
    rules for configs saved before a setting existed: a model of one's own without `linear` is not
    an old MLP run's; read a run's saved config with load_run_config). ConfigError with one line
    for a value off the schema."""
    if OmegaConf.get_type(cfg) is Config:  # (composed: typed already)
        return cfg
    _integers_as_bools(OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, DictConfig) else dict(cfg))
    try:
        return OmegaConf.merge(OmegaConf.structured(Config), cfg)
    except Exception as e:  # noqa: BLE001 - OmegaConf's ValidationError, ConfigKeyError, ...: one line
        first, key = _first_line_and_key(e)
        raise ConfigError(f"{key}: {first}" if key else first) from None


@functools.lru_cache(maxsize=1)
def _bool_keys() -> frozenset[str]:
    """The settings that are true or false (choices(), read off the schema once: typed() asks for
    each leaf of a config)."""
    return frozenset(k for k, v in choices().items() if v == ["false", "true"])


def not_a_bool(key: str, value: Any) -> str | None:
    """Why `value` is refused for `key`, a setting that is true or false, or None. OmegaConf reads
    any integer as a boolean (trainer.cuda_graph=2 as true, -1 too); of the numbers, only 0 and 1
    are taken, as OmegaConf documents. OmegaConf's own words, as for trainer.progress=maybe."""
    kind = "int"
    if isinstance(value, str):  # ('2' or '2_0', quoted: OmegaConf reads such text with int(), as true)
        try:
            kind, value = "str", int(value.strip())
        except ValueError:
            return None
    if isinstance(value, int) and not isinstance(value, bool) and value not in (0, 1) and key in _bool_keys():
        return f"Value '{value}' is not a valid bool (type {kind}) (key '{key}'); give true or false"
    return None


def integer_as_bool(overrides) -> str | None:
    """One line for the first override that gives a setting that is true or false an integer other
    than 0 or 1 (not_a_bool), which composing would take for true; else None."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for ov in overrides:
        try:  # (Hydra's value: 1_0 is 10, '2' a text)
            [o] = OverridesParser.create().parse_overrides([str(ov)])
            value = o.value()
        except Exception:  # noqa: BLE001 - not parsed: composing says why
            continue
        why = not_a_bool(o.key_or_group, value) if isinstance(value, (int, str)) else None
        if why:
            return f"override '{ov}': {why}"
    return None


def _integers_as_bools(cfg: dict) -> None:
    """ConfigError for a setting that is true or false given another integer (not_a_bool)."""
    for key, value in leaves(cfg):
        why = not_a_bool(key, value)
        if why:
            raise ConfigError(why)  # (it names the key)


def integer_as_bool_in_files(config_name: str, overrides: list[str]) -> str | None:
    """One line for a config file of one's own (a group's, through --config-dir or
    hydra.searchpath, chosen or included by another's defaults list; a primary config of one's
    own) that gives a setting that is true or false an integer other than 0 or 1 (not_a_bool):
    Hydra merges each file onto the typed schema while composing, which reads `progress: 2` as
    true before any check sees it. Called inside Hydra's initialize_config_dir, with the
    composition's primary config and overrides: the files are those Hydra's defaults list loads,
    under the packages it puts them in. vaelab's own conf/ is typed as written: not read. None
    also where the list cannot be made (composing says why)."""
    from hydra._internal.defaults_list import create_defaults_list
    from hydra.core.global_hydra import GlobalHydra

    try:  # (Hydra's own steps to compose, up to the files' contents: hydra-core 1.3)
        loader = GlobalHydra.instance().config_loader()
        parsed, repo = loader._parse_overrides_and_create_caching_repo(config_name, list(overrides))
        loaded = create_defaults_list(repo=repo, config_name=config_name, overrides_list=parsed,
                                      prepend_hydra=True, skip_missing=True).defaults
    except Exception:  # noqa: BLE001
        return None
    ours = f"file://{CONF_DIR}"
    for d in loaded:
        if d.config_path is None or d.config_path.startswith("hydra/"):
            continue
        try:
            found = repo.load_config(config_path=d.config_path)
        except Exception:  # noqa: BLE001
            continue
        if found is None or found.is_schema_source or str(found.path).rstrip("/") == ours:
            continue
        raw = OmegaConf.to_container(found.config, resolve=False) if OmegaConf.is_config(found.config) else None
        if not isinstance(raw, dict):
            continue
        for key, value in leaves({k: v for k, v in raw.items() if k not in ("defaults", "hydra")}):
            why = not_a_bool(f"{d.package}.{key}" if d.package else key, value)
            if why:
                return f"{str(found.path).removeprefix('file://')}/{d.config_path}.yaml: {why}"
    return None


def _first_line_and_key(e: Exception) -> tuple[str, str | None]:
    """An OmegaConf error as one line, and the key it names (its full_key), if any."""
    return (str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__), getattr(e, "full_key", None)


def load_run_config(path: str | Path, here: bool = True) -> DictConfig:
    """A run's saved .hydra/config.yaml, typed and validated (`here`: see validate). A file that
    is not YAML, not a mapping, empty, or off the schema is a ConfigError with one line naming
    the file."""
    from hydra.core.utils import setup_globals

    # Hydra's resolvers, as the run's launch had them: name=${now:%H-%M} is saved as written, and
    # without them no such run could be evaluated or resumed (it reads as the time of loading)
    setup_globals()
    try:
        raw = OmegaConf.load(path)
        if not isinstance(raw, DictConfig) or not raw:
            raise ValueError("empty, or not a mapping of keys to values")
        cfg = typed(raw)
        OmegaConf.to_container(cfg, resolve=True)  # bad values and interpolations fail here, not later
    except Exception as e:
        first, key = _first_line_and_key(e)  # OmegaConf's errors name the key; say it, as for an override
        where = f" (key '{key}')" if key else ""
        if getattr(e, "problem_mark", None) is not None:  # a YAML syntax error: what, and where in the file
            def at(mark):
                return f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            first = (f"{e.context}{at(e.context_mark)}: " if e.context else "") + f"{e.problem}{at(e.problem_mark)}"
        # (a key left with no value: what a file cut short after "kwargs:" reads as)
        damaged = " (a setting with no value: is the file whole?)" if "is not Optional" in first else ""
        raise ConfigError(f"{path}: not a valid vaelab config: {first}{where}{damaged}") from None
    try:
        validate(cfg, here)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return cfg


def choices(schema: type = None, prefix: str = "") -> dict[str, list[str]]:
    """Every key of the schema that takes one of a fixed set of values, dotted, with those values
    as to_plain writes them (an enum's names; booleans as HParams shows them, true/false): the
    HParams dashboard filters such a column by checkbox only when it knows the set."""
    import dataclasses
    import typing

    out: dict[str, list[str]] = {}
    if schema is None:  # the str key that validate() holds to a list
        schema = Config
        out["trainer.compile_mode"] = list(_COMPILE_MODES)
    for f, t in ((f, typing.get_type_hints(schema)[f.name]) for f in dataclasses.fields(schema)):
        if dataclasses.is_dataclass(t):
            out.update(choices(t, f"{prefix}{f.name}."))
        elif isinstance(t, type) and issubclass(t, Enum):
            out[f"{prefix}{f.name}"] = [m.name for m in t]
        elif t is bool:
            out[f"{prefix}{f.name}"] = ["false", "true"]
    return out


def leaves(tree: dict, prefix: str = "", empty: bool = True):
    """(dotted key, value) of each leaf of a nested dict: {'a': {'b': 1}} gives ('a.b', 1). An
    empty dict is a leaf of its own, or (empty=False) nothing."""
    for k, v in tree.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and (v or not empty):
            yield from leaves(v, key, empty)
        else:
            yield key, v


def absolute(path: str | Path) -> str:
    """`path` (~ expanded) as an absolute path, its '..' dropped where that names the same folder:
    not after a link, where the kernel's '..' is the link target's parent (sub/../data, with sub a
    link, is not ./data)."""
    import os

    given = Path(path).expanduser().absolute()
    tidy = os.path.normpath(given)
    return tidy if os.path.realpath(tidy) == os.path.realpath(given) else str(given)


def to_plain(cfg: DictConfig) -> dict:
    """The resolved config as plain Python types (enums as strings): safe for torch.load
    (weights_only=True), JSON and TensorBoard."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
