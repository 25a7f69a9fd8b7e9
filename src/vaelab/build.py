"""The model and the optimizer a config names: build_model (vaelab's MLP, or a model of one's
own through model._target_, checked against VAE's interface before anything runs) and
build_optimizer (Adam, in the implementation optim.impl picks). Each usable on its own, as tests
and `vaelab eval` use them."""
from __future__ import annotations

import difflib
import logging
import inspect
import re

import torch
from hydra._internal.utils import _locate
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from vaelab.config import Config, ConfigError
from vaelab.models import VAE
from vaelab.optim import FlatAdam, triton_unusable


def build_model(cfg: DictConfig, input_dim: int = 784, image_shape=(1, 28, 28)) -> VAE:
    spec, own = _model_arguments(cfg)
    try:
        model = instantiate(spec, input_dim=input_dim, image_shape=list(image_shape), **own, _convert_="all")
    except Exception as e:  # a target that does not load, sizes that do not fit: one line (model_error)
        err = model_error(cfg, e)
        if err is e:
            raise
        raise err from None
    if not isinstance(model, VAE):  # (builtins.dict, say: it would fail later, far from the cause)
        raise _not_a_vae(cfg)
    if not type(model).__module__.startswith("vaelab."):
        _check_interface(cfg, model, input_dim)
    return model


_MLP_SETTINGS = ("size", "hidden", "activation", "linear", "init")  # model: keys of vaelab's MLP, not every model's


def _model_arguments(cfg: DictConfig) -> tuple[DictConfig, dict]:
    """What build_model instantiates, and the constructor's own arguments (model.kwargs). The
    MLP's four settings go to a constructor that takes them (or **kwargs); one that does not
    take them gets them only if they were changed, and a ConfigError says it takes no such
    setting. A target that does not load is left to instantiate, which says so."""
    m = cfg.model
    own = OmegaConf.to_container(m.kwargs, resolve=True) if m.get("kwargs") else {}
    keys = [k for k in m if k != "kwargs"]
    try:
        target = _locate(m._target_)  # (hydra.utils.get_object logs an error line of its own first)
    except Exception:  # (does not load: instantiate says why)
        target = None
    if isinstance(target, type) and (not issubclass(target, VAE) or target is VAE):  # torch.nn.Linear
        raise _not_a_vae(cfg)
    try:
        params = inspect.signature(target).parameters.values() if target is not None else None
    except (TypeError, ValueError):  # (no signature to read)
        params = None
    if params is not None and not any(p.kind is p.VAR_KEYWORD for p in params):
        takes = {p.name for p in params}
        default = OmegaConf.structured(Config).model
        for k in _MLP_SETTINGS:
            if k in takes or k not in keys:
                continue
            if m[k] != default[k]:
                given = getattr(m[k], "value", m[k])  # (an enum's name)
                raise ConfigError(f"model.{k}={given}: model._target_={m._target_} takes no {k} (it is a setting of "
                                  f"vaelab's MLP); give a model's own arguments as +model.kwargs.NAME=VALUE (to "
                                  f"vaelab resume without the +)")  # (which refuses the +: review)
            keys.remove(k)
    clash = sorted(set(own) & {*keys, "input_dim", "image_shape"})
    if clash:
        raise ConfigError(f"model.kwargs.{clash[0]}: set by vaelab (model.{clash[0]}, or the data's shape); "
                          f"leave it out of model.kwargs")
    return OmegaConf.create({k: m[k] for k in keys}), own


def _check_interface(cfg: DictConfig, model: VAE, input_dim: int) -> None:
    """A model of one's own that lacks part of VAE's interface failed at the first step (encode),
    or after a whole epoch, unsaved (image_shape, for the pictures): one line before anything
    runs instead. Its encode and decode_logits run once on two blank images, in eval mode, to
    check their shapes."""
    where = f"model._target_={cfg.model._target_}"
    lacks = [a for a in ("latent_size", "input_dim", "image_shape") if not hasattr(model, a)]
    lacks += [f"{f}()" for f in ("encode", "decode_logits") if getattr(type(model), f) is getattr(VAE, f)]
    if lacks:
        raise ConfigError(f"{where}: a vaelab model sets latent_size, input_dim and image_shape and implements "
                          f"encode() and decode_logits() (vaelab/models/base.py); this one lacks {', '.join(lacks)}")
    first = next(model.parameters(), None)
    if first is None:  # (build_optimizer's StopIteration, a traceback, after this)
        raise ConfigError(f"{where}: the model has no parameters to train")
    # (each failed at the first step or after a whole epoch, unsaved, with a traceback; review)
    if first.dtype != torch.float32:
        raise ConfigError(f"{where}: its parameters are {first.dtype}; vaelab feeds a model float32 images "
                          f"(trainer.amp=bf16 runs its products in bf16): build it in float32")
    if model.latent_size != cfg.latent_size:
        raise ConfigError(f"{where}: the model's latent_size is {model.latent_size}, the config's "
                          f"latent_size={cfg.latent_size}: build it with the latent_size it is given "
                          f"(model.latent_size follows latent_size), which the pictures, the reports and sweeps use")
    if type(model).reparameterize is not VAE.reparameterize:  # (the validation after epoch 1 passes a generator:
        import inspect  # a TypeError with a traceback, the epoch unsaved, review)

        try:
            inspect.signature(model.reparameterize).bind(None, None, None)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: reparameterize(mu, logvar, generator) must take the generator (a "
                              f"torch.Generator or None) that vaelab's validation draws eps with, as VAE's does "
                              f"(vaelab/models/base.py)") from None
    x = torch.zeros(2, input_dim, device=first.device, dtype=first.dtype)
    training = model.training
    try:
        with torch.no_grad():
            model.eval()
            got = model.encode(x)
            mu, logvar = got if isinstance(got, (tuple, list)) and len(got) == 2 else (None, None)
            shapes = [tuple(getattr(t, "shape", ())) for t in (mu, logvar)]
            if shapes != [(2, model.latent_size)] * 2:
                raise ConfigError(f"{where}: encode(x) of x (2, {input_dim}) must return two tensors, mu and "
                                  f"logvar, each (2, latent_size={model.latent_size}); got "
                                  f"{', '.join(map(str, shapes)) if mu is not None else type(got).__name__}")
            dtypes = {getattr(t, "dtype", None) for t in (mu, logvar)}
            if dtypes != {x.dtype}:
                raise ConfigError(f"{where}: encode(x) must return mu and logvar in the parameters' dtype, "
                                  f"{x.dtype}; got {', '.join(sorted(map(str, dtypes)))}")
            logits = model.decode_logits(mu)
            shape = tuple(getattr(logits, "shape", ()))
            if shape != (2, input_dim):
                raise ConfigError(f"{where}: decode_logits(z) of z (2, {model.latent_size}) must return logits "
                                  f"(2, {input_dim}); got {shape or type(logits).__name__}")
            if logits.is_floating_point() and logits.device.type != "meta":  # (the CUDA warm-up's: no values)
                # A decoder that ends in a sigmoid. Of 16 draws from the prior, not of the blank images'
                # mu alone: a fresh logit decoder's values for one z can all be of one sign (review)
                z = torch.randn(16, model.latent_size, generator=torch.Generator().manual_seed(0)).to(first.device)
                probe = model.decode_logits(z)
                if bool((probe >= 0).all()):  # (a sigmoid's, or a ReLU's or softplus's: no black pixel either)
                    logging.getLogger("vaelab").warning(
                        "%s: decode_logits(z) of 16 draws of z returned no negative value (%d of them, %.3g "
                        "to %.3g): probabilities? vaelab's losses take logits and apply the sigmoid themselves, and "
                        "sigmoid(logits >= 0) is at least 0.5, no black pixel; return the decoder's last layer "
                        "before its sigmoid (or ReLU, softplus)", where, probe.numel(), float(probe.min()),
                        float(probe.max()))
            if type(model).forward is not VAE.forward:  # training calls forward: a model's own is checked too
                _check_forward(where, model, x)
    finally:
        model.train(training)


def _check_forward(where: str, model: VAE, x: torch.Tensor) -> None:
    """A model's own forward(x), which the training step calls, returns (logits, mu, logvar) of
    the shapes encode and decode_logits have, as floats: a wrong one failed at the first step with
    a traceback, and a logvar of (B, 1) broadcast over the latent dimensions (integer logits left
    the decoder without a gradient) and trained silently. It runs as the step runs it, in train
    mode; what that changes (BatchNorm's running statistics, the generators its draws come from)
    is put back after it."""
    if x.device.type == "meta":  # (the CUDA warm-up's model: nothing to run, and a compiled forward fails there)
        return
    devices = [x.device.index or 0] if x.device.type == "cuda" else []
    buffers = [(b, b.clone()) for b in model.buffers()]
    training = model.training
    try:
        with torch.random.fork_rng(devices=devices, device_type=x.device.type if devices else "cuda"):
            model.train()
            got = model(x)
    finally:
        model.train(training)
        for b, saved in buffers:
            b.copy_(saved)
    parts = got if isinstance(got, (tuple, list)) else (got,)
    shapes = [tuple(getattr(t, "shape", ())) or type(t).__name__ for t in parts]
    want = [(2, x.shape[1]), (2, model.latent_size), (2, model.latent_size)]
    if shapes != want:
        raise ConfigError(f"{where}: forward(x) of x {tuple(x.shape)} must return logits {want[0]}, mu and logvar "
                          f"{want[1]}, as VAE.forward does; got {', '.join(map(str, shapes))}")
    dtypes = [getattr(t, "dtype", None) for t in parts]
    if not all(isinstance(d, torch.dtype) and d.is_floating_point for d in dtypes):
        raise ConfigError(f"{where}: forward(x) must return logits, mu and logvar as floating-point tensors; got "
                          f"{', '.join(str(d) for d in dtypes)}")


def _not_a_vae(cfg: DictConfig) -> ConfigError:
    return ConfigError(f"model._target_={cfg.model._target_}: not a vaelab model: a subclass of "
                       f"vaelab.models.VAE (not VAE itself), e.g. vaelab.models.MLPVAE")


def _not_found(module: str) -> bool:
    """Whether a top-level module is nowhere on the import path (not: found, with a submodule missing)."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):
        return False


def model_error(cfg: DictConfig, e: Exception) -> Exception:
    """A ConfigError for a model that cannot be built: a model._target_ that does not import,
    or sizes whose weights do not fit in memory (latent_size=1000000000); `e` itself otherwise."""
    cause = e.__cause__ if isinstance(e, InstantiationException) and e.__cause__ is not None else e
    text = " ".join(str(cause).split())
    # Hydra's words for a target it cannot find; an error raised inside the model's own code
    # (an ImportError in its __init__, say) keeps its traceback
    if isinstance(e, InstantiationException) and text.startswith(("Error loading '", "Error locating target")):
        # (review: vaelab-train found it with PYTHONPATH=., and vaelab sample, typed next, without it did not)
        # (only for the target's own module: not a package its module imports, nor a class misspelt; review)
        gone = re.search(r"No module named '([\w.]+)'", text)
        hint = ("; a module of one's own is found through PYTHONPATH by every vaelab command: PYTHONPATH=/its/folder "
                "vaelab ..." if gone and str(cfg.model._target_).startswith(f"{gone.group(1)}.")
                and "is not a package" not in text and _not_found(gone.group(1).split(".")[0]) else "")
        return ConfigError(f"model._target_={cfg.model._target_}: {text}{hint}")
    if isinstance(e, ConfigError):
        return e
    try:
        target = _locate(cfg.model._target_)  # (it loaded: the error came from calling it)
    except Exception:
        return e
    # (a function that builds a model is a target too: its own errors keep their traceback)
    if isinstance(target, type) and (not issubclass(target, VAE) or target is VAE):  # torch.nn.Linear: no size=
        return _not_a_vae(cfg)
    spec, own = _model_arguments(cfg)
    args = {**{k: v for k, v in spec.items() if k != "_target_"}, **own}
    try:  # the keys under model: are they the class's constructor arguments? (VAE itself takes none)
        inspect.signature(target).bind(**args, input_dim=0, image_shape=[])
    except TypeError as bad:
        missing = re.search(r"missing a required argument: '(\w+)'", str(bad))
        # (review: a class given an argument since a run trained; resume takes no +, eval no overrides)
        why = (f"{bad}; give it with +model.kwargs.{missing.group(1)}=VALUE (to vaelab resume without the +; a run "
               f"trained before the class took it is evaluated once the class gives it a default)") if missing \
            else str(bad)
        params = inspect.signature(target).parameters.values()
        takes = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        extra = [] if any(p.kind == p.VAR_KEYWORD for p in params) else [k for k in args if k not in takes]
        if extra:  # (a misspelt one, which bind() names after the one it stands for: what the class does take)
            close = difflib.get_close_matches(extra[0], takes, n=1)
            why = (f"got an unexpected keyword argument '{extra[0]}'" + (f" (did you mean {close[0]}?)" if close
                                                                         else "") + f"; it takes {', '.join(takes)}")
        return ConfigError(f"model._target_={cfg.model._target_} does not take the settings given it "
                           f"({', '.join([*args, 'input_dim', 'image_shape'])}): {why}")
    except ValueError:  # no signature to read (a builtin): nothing to say about its arguments
        pass
    if isinstance(cause, MemoryError) or (isinstance(cause, RuntimeError) and "allocate" in text):
        sizes = ", ".join(f"{k}={getattr(v, 'value', v)}" for k, v in (
            ("latent_size", cfg.latent_size), ("model.size", cfg.model.size), ("model.hidden", cfg.model.hidden))
            if v is not None)
        return ConfigError(f"the model ({sizes}) does not fit in memory: {text[:200]}")
    return e


def _left_without_gradient(model: torch.nn.Module) -> list[str]:
    """The parameters of a model of one's own that encode and decode_logits leave without a
    gradient (a layer they never use), from one probe on two blank images in eval mode; none
    for vaelab's own models, which use every one. (A model whose own forward uses them counts
    them too: optim.impl=auto then takes fused Adam, which is right for either.)"""
    if type(model).__module__.startswith("vaelab.") or not isinstance(model, VAE):
        return []
    first = next(model.parameters())
    training = model.training
    # (the random numbers a model draws in the probe are given back: optim.impl=auto's run then
    # draws what optim.impl=fused's does)
    cuda = [first.device] if first.device.type == "cuda" else []
    try:
        model.eval()
        with torch.enable_grad(), torch.random.fork_rng(devices=cuda):
            mu, logvar = model.encode(torch.zeros(2, model.input_dim, device=first.device, dtype=first.dtype))
            (model.decode_logits(mu).sum() + mu.sum() + logvar.sum()).backward()
        return [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    finally:
        model.train(training)
        for p in model.parameters():
            p.grad = None


def build_optimizer(cfg: DictConfig, model: torch.nn.Module, capturable: bool = False) -> torch.optim.Optimizer:
    """Adam from cfg.optim. capturable: for a step that is a CUDA graph (trainer.cuda_graph):
    the step count lives on the device, so that the graph can hold the whole update; the same
    rule. optim.impl=auto is flat Adam there (as one Triton kernel where Triton can run) and
    fused Adam otherwise (config.OptimConfig)."""
    o = cfg.optim
    impl = o.impl
    first = next(model.parameters())
    device, dtype = first.device, first.dtype
    if impl == "auto":  # (flat Adam updates every parameter: not for a model with frozen ones,
        # nor one with a parameter a step leaves without a gradient, which it refuses)
        flat = capturable and all(p.requires_grad for p in model.parameters()) and not _left_without_gradient(model)
        impl = ("triton" if triton_unusable(device, dtype) is None else "flat") if flat else "fused"
    if impl in ("flat", "triton"):  # the model's parameters become views into one tensor
        if impl == "triton" and (why := triton_unusable(device, dtype)):
            raise ConfigError(f"optim.impl=triton: {why}; optim.impl=flat is the same update in torch kernels")
        chose = f"optim.impl={o.impl}" + (" (flat Adam, for the CUDA-graph step)" if o.impl == "auto" else "")
        return FlatAdam(model.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay,
                        kernel="triton" if impl == "triton" else "torch",
                        names=[n for n, _ in model.named_parameters()], setting=chose)
    if impl == "fused" and device.type not in ("cpu", "cuda"):
        impl = "foreach"  # no fused Adam kernel there
    return torch.optim.Adam(model.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                            weight_decay=o.weight_decay, foreach=impl == "foreach",
                            fused=True if impl == "fused" else None, capturable=capturable)
