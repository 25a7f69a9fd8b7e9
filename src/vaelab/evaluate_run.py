"""`vaelab eval RUN_DIR`: the test-split numbers and pictures of a trained run, into
RUN_DIR/eval.json, RUN_DIR/eval/*.png and the run's own TensorBoard (test/*, eval/*); and
`vaelab sample RUN_DIR`: a grid of the run's samples from the prior.

    vaelab eval outputs/runs/default/2024-05-01_12-00-00 --k 5000
    vaelab eval RUN_DIR --checkpoint best --device cuda
    vaelab eval RUN_DIR --checkpoint RUN_DIR/checkpoints/epoch_0010.pt --k 100 --no-pictures

Numbers (evaluate.py has the definitions): the ELBO with its reconstruction term (averaged over
k draws of z) and KL term, the IWAE bound with the same k importance samples (-bound = the "test NLL" of papers), the
active units, and the KL of each latent dimension; in nats per example and bits per dimension.
"""
from __future__ import annotations

import argparse
import errno
import contextlib
import json
import logging
import math
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

from vaelab import checkpoint as ckpt_io
from vaelab.config import _DEVICE_RE, DEVICES, ConfigError, load_run_config, resolve_device
from vaelab.data import DataError, load_data

# torch and the modules built on it are imported where they are used: a mistyped run folder is
# named in a fraction of a second, not after ~2 s of imports.

log = logging.getLogger("vaelab")


class RunDirError(FileNotFoundError):
    """A path that is not a vaelab run directory. Its message is one line for the user."""


# The errors a user can cause from the command line; each has a one-line message.
USER_ERRORS = (RunDirError, ckpt_io.CheckpointError, ConfigError, DataError)

EVAL_SUFFIX = ".eval"  # the event file of a run's newest evaluation (evaluate_run)
# The pictures `vaelab eval` draws into RUN_DIR/eval/ (pictures.make_pictures), as <name>.png.
EVAL_PICTURES = ("samples", "reconstructions", "traversals", "interpolations", "manifold", "latents_scatter",
                 "curves", "kl_by_dim")


def _checkpoint_path(run_dir: Path, checkpoint: str) -> Path:
    """The file --checkpoint names: last, best, a file name from RUN_DIR/checkpoints/, or a path
    (absolute or relative to the shell) to a file there. A checkpoint from anywhere else is
    refused: evaluated under this run's config, its numbers would go into this run's eval.json
    and TensorBoard as if they were this run's."""
    ckpt_dir = run_dir / "checkpoints"
    have = sorted(p.name for p in ckpt_dir.glob("*.pt"))  # name what there is, not only what is missing
    holds = ", ".join(have) if have else "none"
    if checkpoint in ("last", "best"):
        path = ckpt_dir / f"{checkpoint}.pt"
    elif os.sep not in checkpoint and not (os.altsep and os.altsep in checkpoint):
        path = ckpt_dir / checkpoint  # --checkpoint epoch_0010.pt
    else:  # ./last.pt is a path: a file of the shell's folder, not of checkpoints/
        given = Path(checkpoint)
        if given.parent.resolve() != ckpt_dir.resolve():
            other = given.parent.parent
            folder = f" ({other})" if given.parent.name == "checkpoints" and (other / ".hydra").is_dir() else ""
            raise RunDirError(f"--checkpoint {checkpoint}: not a file in {ckpt_dir}/; give last, best or a "
                              f"file name from there (it holds {holds}); to use another run's checkpoint, "
                              f"give that run's folder{folder} as RUN_DIR")
        path = ckpt_dir / given.name
    if not path.is_file():
        if not have and _training_now(run_dir):
            raise RunDirError(f"--checkpoint {checkpoint}: {run_dir} is still training its first epoch (another "
                              f"process holds it) and has no checkpoint yet; try again once that epoch ends")
        stopped = ckpt_io.read_json(run_dir / ckpt_io.STOPPED) or {}
        if not have and stopped.get("state") == "diverged":  # (it was "--checkpoint last", never given)
            reason = stopped.get("reason", "a non-finite loss").split(";")[0]
            raise RunDirError(f"{run_dir} diverged before its first checkpoint ({reason}): there are no weights "
                              f"to load")
        if not have:  # (last, best or any name: there is nothing to choose from)
            why = ("the run finished, and its checkpoints have been deleted" if (run_dir / "metrics.json").is_file()
                   else "the run stopped before its first checkpoint")
            raise RunDirError(f"{ckpt_dir}: no checkpoint, so no weights to load ({why})")
        raise RunDirError(f"--checkpoint {checkpoint}: no such checkpoint; {ckpt_dir} holds {holds} "
                          f"(give last, best or a file name from there)")
    return path


def _training_now(run_dir: Path) -> bool:
    """Whether another process holds the run's training lock (checkpoint.only_process)."""
    try:
        ckpt_io.check_not_in_use(run_dir)
    except ckpt_io.CheckpointError:
        return True
    except OSError:  # a folder that cannot be opened: say what the checkpoints folder holds
        pass
    return False


def _load(run_dir: str | Path, checkpoint: str, device: str):
    run_dir = Path(run_dir)
    if run_dir.is_file():  # e.g. RUN/checkpoints/last.pt, meant as --checkpoint
        from vaelab.workflow import runs_hint

        raise RunDirError(f"{run_dir}: a file, not a run directory{runs_hint(run_dir)}")
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: no such run directory")
    cfg_path = run_dir / ".hydra" / "config.yaml"
    if not cfg_path.is_file():
        from vaelab.workflow import no_saved_config

        raise RunDirError(no_saved_config(run_dir))
    cfg = load_run_config(cfg_path, here=False)  # --device says where it runs, not the run's device=...
    path = _checkpoint_path(run_dir, checkpoint)
    ck = ckpt_io.load(path)
    from vaelab.build import build_model  # (torch: after the cheap checks above)

    ckpt_io.check_config_whole(ck, path, cfg_path, cfg, overrides=False)
    model = build_model(cfg)  # (a model of one's own that does not import here: a ConfigError)
    ckpt_io.check_compatible(ck, model, path, cfg)
    model.load_state_dict(ck["model"])
    dev = resolve_device(device, given_as="--device ")
    return cfg, model.to(dev).eval(), path, ck


def load_run(run_dir: str | Path, checkpoint: str = "last", device: str = "cpu"):
    """(config, model on device in eval mode, checkpoint path) of a run directory.
    checkpoint: 'last', 'best', or a file (its name or a path) in RUN_DIR/checkpoints/."""
    cfg, model, path, _ = _load(run_dir, checkpoint, device)
    return cfg, model, path


def data_root(run_dir: Path, cfg) -> Path:
    """data.root as the run saw it. A relative root is relative to the folder vaelab-train was
    started from, which Hydra records in .hydra/hydra.yaml; eval may be started elsewhere."""
    root = Path(os.path.expanduser(str(cfg.data.root)))  # (~nosuchuser: as it is)
    hydra_yaml = run_dir / ".hydra" / "hydra.yaml"
    if not root.is_absolute() and hydra_yaml.is_file():
        cwd = OmegaConf.select(OmegaConf.load(hydra_yaml), "hydra.runtime.cwd")
        if cwd and Path(cwd).is_dir():  # a launch folder moved or deleted since: the current one
            return Path(cwd) / root
    return root


def _no_likelihood(recon, binarize) -> bool:
    """A Bernoulli decoder on grey levels: a cross-entropy, whose ELBO and IWAE formulas bound no
    likelihood (the table and the logged line say "-ELBO form", "IWAE form")."""
    return recon == "bce" and binarize == "none"


def _ranges(numbers: list[int]) -> str:
    """[1, 2, 3, 5] -> '1-3, 5'."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def _likelihood(recon: str, binarize: str) -> tuple[str, str]:
    """(short name, one-line note) of the decoder likelihood the numbers are in."""
    from vaelab.losses import MSE_GAUSSIAN_VARIANCE

    if recon == "mse":
        return "gaussian", (f"loss.recon=mse is a Gaussian decoder with variance {MSE_GAUSSIAN_VARIANCE} on "
                            f"[0, 1] pixels (sum of squares = -log N(x; mean, 1/2) - D/2 log(pi)); "
                            f"a continuous density at x/255, not dequantised: its bits/dim is no code length for "
                            f"the images, comparable neither with Bernoulli NLLs of binarized MNIST nor with "
                            f"dequantised 8-bit bits/dim (those, at x in [0, 256), would be about 8 higher)")
    if binarize == "none":  # (not "bernoulli": a program reading eval.json would take its nll_iwae for an NLL)
        return "cross-entropy", ("loss.recon=bce on grey levels (data.binarize=none): a cross-entropy, not a "
                             "normalised likelihood; use data.binarize=dynamic for numbers comparable with papers")
    if binarize == "static":
        return "bernoulli", ("Bernoulli decoder on MNIST binarized once here (data.binarize=static, a draw of its "
                             "own, not Larochelle and Murray's fixed binarized MNIST that static-MNIST papers use): "
                             "a likelihood, but papers' numbers on either binarization are not directly comparable")
    return "bernoulli", (f"Bernoulli decoder on binarized MNIST (data.binarize={binarize}: training batches redrawn "
                         f"each step, the test split binarized once with a fixed seed), comparable with Burda et al. "
                         f"2016")


def evaluate_run(run_dir: str | Path, k: int = 5000, device: str = "auto", checkpoint: str = "last",
                 progress: bool = True, seed: int = 0, pictures: bool = True,
                 data_root_override: str | Path | None = None, how: str = "give --data-root DIR",
                 job: str = "") -> dict:
    """Evaluate a run on the test split; write eval.json (and the pictures, and TensorBoard
    events when the run logs to TensorBoard). Returns what eval.json holds. `job`: the start of
    its log line (a sweep job's name and a space, as train() begins its epoch lines)."""
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    if k < 1:
        raise ConfigError(f"k={k}: the number of importance samples must be >= 1")
    # How far the run had trained before its checkpoint was read, not when eval.json is written: a
    # resume may finish the run meanwhile, and its own final evaluation is then still to come.
    # (Read first: a resume between the two reads then makes it too low, and the final evaluation
    # is asked for again, never too high.)
    run_epochs = (ckpt_io.read_json(run_dir / "metrics.json") or {}).get("epochs", 0)
    run_epochs = run_epochs if isinstance(run_epochs, int) else 0
    cfg, model, path, ck = _load(run_dir, checkpoint, device)  # (a wrong folder fails here, before torch)
    at_start = ckpt_io.read_json(run_dir / "eval.json")  # (to notice one written while this one runs)
    import torch

    from vaelab.evaluate import ACTIVE_THRESHOLD, bits_per_dim, elbo_stats, subnormals_flushed, elbo_and_iwae
    from vaelab.losses import MSE_GAUSSIAN_VARIANCE, MSE_NLL_CONST_PER_DIM
    from vaelab.pictures import make_pictures

    # The run's own arithmetic (trainer.flush_denormal), so that vaelab eval gives the numbers of
    # the run's final evaluation; put back after, as train() does.
    with subnormals_flushed(cfg.trainer.flush_denormal):
        dev = next(model.parameters()).device
        root = Path(data_root_override) if data_root_override else data_root(run_dir, cfg)
        recon_kind = getattr(cfg.loss.recon, "value", cfg.loss.recon)
        binarize = getattr(cfg.data.binarize, "value", cfg.data.binarize)
        data = load_data(root, dev, val_size=cfg.data.val_size, split_seed=cfg.data.split_seed,
                         binarize=binarize, download=cfg.data.download, saved=True,
                         given=data_root_override is not None, how=how)
        trained_on = ck.get("state", {}).get("data_digest")  # (a checkpoint from before 2026-11-26 has none)
        if trained_on is not None and trained_on != data.digest:
            log.warning("the data differs from what the run trained on (data digest %s, now %s, from %s): these are "
                        "test numbers of other data", trained_on, data.digest, root)
        test = data.test.images
        d = test.shape[1]
        gen = torch.Generator(device=dev).manual_seed(seed)
        st = elbo_stats(model, test, recon_kind, cfg.trainer.eval_batch_size, gen)  # (its KL per dimension, AU)
        # The ELBO and the IWAE bound from the same k draws of z (elbo_and_iwae): the ELBO's recon is
        # their mean, not one draw's. For MSE, as a likelihood, it is a Gaussian with variance 1/2,
        # whose NLL adds D * 0.5 * log(pi) nats to training's squared error (losses.py).
        b = elbo_and_iwae(model, test, k, recon_kind, gen, progress=progress)
        recon, kl, elbo, nll, nll_se = b["recon"], b["kl"], -b["nelbo"], b["nll_iwae"], b["nll_iwae_se"]
        likelihood, note = _likelihood(recon_kind, binarize)
        # The x-axis of the checkpoint's own point of training (best.pt, epoch_0001.pt and a
        # stopped run's last.pt are not where metrics.json, if any, says the run ended).
        step = int(ck.get("state", {}).get("examples", _examples_seen(run_dir)))
        # A checkpoint taken part-way through an epoch (Ctrl-C, SIGTERM): "epoch" counts the epochs
        # it had finished, and this says how far into the next it was.
        pos, perm = ck.get("state", {}).get("pos"), ck.get("state", {}).get("perm")
        in_epoch = {"images": int(pos), "of": len(perm)} if pos and perm is not None else None
        result = {
            "elbo": elbo, "recon": recon, "kl": kl, "nll_iwae": nll, "k": k,
            "elbo_draws": k,  # (the ELBO's draws of z per image: 1 in an eval.json of an older vaelab, unsaid)
            # standard errors of those means over the test images (evaluate.standard_error)
            "elbo_se": b["nelbo_se"], "recon_se": b["recon_se"], "kl_se": b["kl_se"], "nll_iwae_se": nll_se,
            "bits_per_dim": bits_per_dim(nll, d), "elbo_bits_per_dim": bits_per_dim(-elbo, d),
            "recon_bits_per_dim": bits_per_dim(recon, d), "kl_bits_per_dim": bits_per_dim(kl, d),
            "active_units": st["active_units"], "latent_size": int(cfg.latent_size),
            "kl_per_dim": [float(v) for v in st["kl_per_dim"]],
            "mean_variance_per_dim": [float(v) for v in st["mu_var"]],  # Cov_x(E_q[z_i|x]), the AU statistic
            # every inactive dimension (dead_dims: those of them the traversals show; review)
            "inactive_dims": [i for i, v in enumerate(st["mu_var"].tolist()) if not v > ACTIVE_THRESHOLD],
            "checkpoint": str(path.resolve()), "epoch": int(ck.get("state", {}).get("epoch", 0)),
            **({"in_epoch": in_epoch} if in_epoch else {}),
            "examples_seen": step, "split": "test", "n_examples": int(test.shape[0]), "dim": int(d),
            # how far the run had trained when this was made (0: not finished): a finished run's final
            # evaluation is missing while this is below its epochs (checkpoint.final_eval_missing)
            "made_when": {"run_epochs": run_epochs},
            "likelihood": likelihood, "gaussian_variance": MSE_GAUSSIAN_VARIANCE if recon_kind == "mse" else None,
            "recon_kind": recon_kind, "binarize": binarize, "note": note, "seed": seed,
            "data_root": str(root.resolve()), "data_digest": data.digest,  # (metrics.json: the training's)
            "tensorboard": bool(cfg.logger.tensorboard),
        }
        # The evaluation's TensorBoard events go into an event file of their own (suffix .eval), which
        # the next evaluation replaces, as its eval.json replaces this one: a second `vaelab eval` then
        # shows one point per tag, not two at the same step. (SummaryWriter's purge_step would hide
        # the training's own events at that step as well.) Runs evaluated before 2026-11-26 have those
        # events in the training's event file, which is not rewritten: they stay, beside the newest
        # evaluation's. Two evaluations of one run at once (`vaelab eval` during the run's own final
        # one) each hold a lock on their event file until they end, and each removes, as it ends, only
        # the files no evaluation holds: the last to end is what both eval.json and TensorBoard show.
        old_events = sorted(run_dir.glob(f"events.out.tfevents.*{EVAL_SUFFIX}"))
        writer, staging, mine, written = None, None, None, False
        held = contextlib.ExitStack()
        hydra_dir = run_dir / ".hydra"

        def one_at_a_time():  # (the removal below runs under it: it must not see a file not locked yet)
            # (a warning: vaelab eval shows no info lines, and a wait with no word looked hung)
            return (ckpt_io.only_process(hydra_dir, waiting=lambda: log.warning(
                "another evaluation of %s is writing its results: waiting for it (Ctrl-C stops waiting)", run_dir))
                if hydra_dir.is_dir() else contextlib.nullcontext())
        if pictures:  # the curves' scalars, read before this evaluation's event file is open: TensorBoard's
            # reader logged an ERROR for a file written while it read the folder
            from vaelab.compare import Run, kl_history

            run = Run(run_dir)
            run.scalars()
        if cfg.logger.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            from vaelab.logger import quiet_writer_thread_errors
            quiet_writer_thread_errors()
            with one_at_a_time():
                writer = SummaryWriter(log_dir=str(run_dir), filename_suffix=EVAL_SUFFIX)
                mine = Path(writer._get_file_writer().event_writer._file_name)
                held.enter_context(ckpt_io.only_process(mine))
            result["events_file"] = mine.name  # (a later --no-pictures evaluation copies its images from there)
        try:
            if writer is not None:
                from vaelab.compare import EVAL_SCALARS  # (the tags compare reads from eval.json where none are)

                for key in EVAL_SCALARS:
                    if math.isfinite(result[key]):
                        writer.add_scalar(f"test/{key}", result[key], step)
            # Which weights the pictures in eval/ show: these, or (--no-pictures) those of an earlier eval.
            result["pictures_of"] = {"checkpoint": result["checkpoint"], "examples_seen": step,
                                     "data_digest": result["data_digest"]}
            if not pictures:
                before = ckpt_io.read_json(run_dir / "eval.json") or {}
                kept = before.get("pictures_of") if (run_dir / "eval").is_dir() else None
                kept = kept if isinstance(kept, dict) else None
                if kept and isinstance(kept.get("checkpoint"), str):  # (this run's, also where it was moved or copied)
                    name = Path(kept["checkpoint"]).name
                    kept = {**kept, "checkpoint": str(Path(result["checkpoint"]).parent / name)}
                result["pictures_of"] = kept
                # eval.json's "pictures" (a script reads them): what eval/ holds now, in this run's folder
                result["pictures"] = {name: str((run_dir / "eval" / f"{name}.png").resolve()) for name in EVAL_PICTURES
                                      if (run_dir / "eval" / f"{name}.png").is_file()}
                if kept:
                    result.update({k: before[k] for k in ("traversal_dims", "dead_dims", "pictures_left_out")
                                   if k in before})
                if kept and kept.get("examples_seen") != step:
                    log.warning("%s/ shows the weights of %s at %s examples seen, not these (%s at %d); leave out "
                                "--no-pictures to redraw it", run_dir / "eval", Path(str(kept.get("checkpoint"))).name,
                                kept.get("examples_seen"), path.name, step)
                elif kept and kept.get("data_digest") not in (None, result["data_digest"]):  # (review: unsaid)
                    log.warning("%s/ shows these weights on other data (digest %s, not %s); leave out --no-pictures "
                                "to redraw it", run_dir / "eval", kept.get("data_digest"), result["data_digest"])
                if writer is not None:  # eval/ keeps its pictures, and TensorBoard its eval/* images
                    # from the evaluation eval.json holds, not one killed part-way or running now
                    named = before.get("events_file")
                    _copy_images([run_dir / named] if isinstance(named, str) and (run_dir / named).is_file() else
                                 [f for f in old_events if not _evaluating(f)], writer)
            if pictures:  # drawn aside, into eval/ only with eval.json: a stop part-way leaves eval/ as it was
                _remove_stale_staging(run_dir)
                staging = Path(tempfile.mkdtemp(prefix=".eval-", suffix=ckpt_io.TMP_SUFFIX, dir=run_dir))
                notes = []  # what the curves' numbers are, where they are not the -ELBO's terms
                scalars = run.scalars()  # (an epochs.jsonl's epoch points too)
                if cfg.loss.beta != 1 or cfg.loss.kl_warmup_steps:
                    warmup = cfg.loss.kl_warmup_steps
                    ramp = f", ramped up from 0 over {warmup} steps" if warmup else ""
                    notes.append(f"the train loss is recon + beta x KL (loss.beta={cfg.loss.beta:g}{ramp}), the "
                                 f"validation loss recon + KL")
                elif any(v != 1 for tag in ("train/beta", "epoch/beta") for _, v in scalars.get(tag, [])):
                    # (a run resumed with loss.beta=1: review)
                    notes.append("the train loss is recon + beta x KL (a resume changed beta's settings: train/beta "
                                 "has its betas), the validation loss recon + KL")
                logged = {round(v) for _, v in run.scalars(events_only=True).get("epoch/epoch", [])}
                missing = sorted(set(range(1, result["epoch"] + 1)) - logged)  # (logger.tensorboard=false)
                if logged and missing:
                    some = "them" if len(missing) > 1 else "it"
                    kept = {round(v) for _, v in scalars.get("epoch/epoch", [])}  # (epochs.jsonl's, from 2026-11-27)
                    notes.append(f"epoch{'s' * (len(missing) > 1)} {_ranges(missing)} of {result['epoch']} logged "
                                 + (f"no events: the per-log-point train curves leave {some} out" if
                                    set(missing) <= kept else f"no events: the curves leave {some} out"))
                if recon_kind == "mse":
                    notes.append(f"loss.recon=mse: the losses leave out the Gaussian decoder's constant (add "
                                 f"{d * MSE_NLL_CONST_PER_DIM:.2f} nats for the -ELBO)")
                with ckpt_io.only_process(staging):  # (held while in use: see _remove_stale_staging)
                    drawn = make_pictures(model, test, data.test.labels, st["kl_per_dim"],
                                          st["mu_var"] > ACTIVE_THRESHOLD, staging, writer, step, seed,
                                          scalars=scalars, curves_note="\n".join(notes),
                                          # (up to the evaluated checkpoint's epoch: the weights evaluated)
                                          kl_history=[h for h in kl_history(run_dir) if h[0] <= result["epoch"]],
                                          split="test" if cfg.data.val_size == 0 else "validation")
            if writer is not None:
                writer.close()
            result["seconds"] = time.perf_counter() - t0
            # From here to the end, one evaluation of the run at a time: its pictures, eval.json and
            # event file stay one evaluation's.
            held.enter_context(one_at_a_time())
            # eval.json's temporary files are only evaluations', and under the lock no other is
            # writing one: any there were left by an evaluation killed mid-write
            for stale in run_dir.glob(f".eval.json.*{ckpt_io.TMP_SUFFIX}"):
                stale.unlink(missing_ok=True)
            if pictures:
                (run_dir / "eval").mkdir(exist_ok=True)
                for name, at in drawn["pictures"].items():
                    final = run_dir / "eval" / f"{name}.png"
                    os.replace(at, final)
                    drawn["pictures"][name] = str(final.resolve())  # (as eval.json's checkpoint: not relative)
                for name in set(EVAL_PICTURES) - set(drawn["pictures"]):  # an earlier evaluation's that this one did
                    (run_dir / "eval" / f"{name}.png").unlink(missing_ok=True)  # not draw: not to pass for its
                result.update(drawn)
            now = ckpt_io.read_json(run_dir / "eval.json")
            if now is not None and now != at_start:  # another evaluation (the run's own final one, say) finished first
                made_when = now.get("made_when") if isinstance(now.get("made_when"), dict) else {}
                later = isinstance(made_when.get("run_epochs"), int) and made_when["run_epochs"] > run_epochs
                log.warning("replacing %s, written while this evaluation ran (%s, epoch %s, k=%s)%s",
                            run_dir / "eval.json", Path(str(now.get("checkpoint"))).name, now.get("epoch"),
                            now.get("k"),
                            f"; `vaelab resume {shlex.quote(str(run_dir))}` makes the run's own final evaluation again"
                            if later else "")
            ckpt_io.write_text_atomic(run_dir / "eval.json", json.dumps(result, indent=2) + "\n")
            written = True
            # only now: an evaluation that fails on the way leaves the previous one
            _remove_events(f for f in run_dir.glob(f"events.out.tfevents.*{EVAL_SUFFIX}")
                           if f != mine and not _evaluating(f))
        except BaseException:  # Ctrl-C, a full disk: TensorBoard keeps showing the evaluation eval.json holds
            if writer is not None:
                try:
                    writer.close()  # (on a full disk this fails too, flushing what it still holds)
                except OSError:
                    pass
                finally:
                    if not written:
                        _remove_events([mine])
            raise
        finally:
            held.close()
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
        grey = _no_likelihood(recon_kind, binarize)  # (the words the table uses)
        log.info("%seval (%s, k=%d): %s %.2f nats (recon %.2f, KL %.2f), %s %.2f nats%s%.4f bits/dim%s, "
                 "active units %d/%d", job, path.name, k, "ELBO form" if grey else "ELBO", elbo, recon, kl,
                 "IWAE form" if grey else "IWAE NLL", nll, " (" if grey else " = ", result["bits_per_dim"],
                 ": a cross-entropy's, no code length)" if grey else "", st["active_units"], cfg.latent_size)
        return result


def _remove_stale_staging(run_dir: Path, min_age_s: float = 60.0) -> None:
    """Delete the picture folders (.eval-*.tmp) of evaluations killed part-way (kill -9, a lost
    node). One another evaluation is drawing into now is locked by it; one made in the last
    minute may be about to be (its lock comes just after the folder)."""
    for stale in run_dir.glob(f".eval-*{ckpt_io.TMP_SUFFIX}"):
        if not stale.is_dir() or time.time() - stale.stat().st_mtime < min_age_s:
            continue
        try:
            ckpt_io.check_not_in_use(stale)
        except ckpt_io.CheckpointError:
            continue
        shutil.rmtree(stale, ignore_errors=True)


def _evaluating(event_file: Path) -> bool:
    """Whether an evaluation running now holds `event_file` (its own, until it ends)."""
    try:
        ckpt_io.check_not_in_use(event_file)
    except ckpt_io.CheckpointError:
        return True
    except OSError:  # (gone meanwhile)
        return False
    return False


def _remove_events(files) -> None:
    """Delete superseded evaluation event files. One that cannot go (Windows, where a running
    TensorBoard holds it open) costs a warning, not the evaluation whose numbers are written."""
    for f in files:
        try:
            f.unlink(missing_ok=True)
        except OSError as e:
            log.warning("%s: could not remove an earlier evaluation's events (%s); TensorBoard shows both until "
                        "it is deleted", f, e.strerror or e)


def _copy_images(event_files: list[Path], writer) -> None:
    """The eval/* images of earlier evaluations' event files, written again by `writer` (at their
    own steps and wall times), so that --no-pictures, which keeps eval/, keeps them in TensorBoard."""
    # (the legacy loader yields the events as written; EventFileLoader turns images into tensors)
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    fw = writer._get_file_writer()
    for f in event_files:
        for event in LegacyEventFileLoader(str(f)).Load():
            values = [v for v in event.summary.value if v.tag.startswith("eval/")]
            if values:
                del event.summary.value[:]
                event.summary.value.extend(values)
                fw.add_event(event, walltime=event.wall_time)


def _examples_seen(run_dir: Path) -> int:
    """The TensorBoard x-axis of the run (examples seen), from metrics.json; 0 if absent."""
    try:
        return int((ckpt_io.read_json(run_dir / "metrics.json") or {}).get("examples_seen", 0))
    except (TypeError, ValueError):
        return 0


def checkpoint_when(r: dict) -> str:
    """Where in training eval.json's checkpoint was taken: "epoch 3", or part-way through one."""
    part = r.get("in_epoch")
    if isinstance(part, dict) and part.get("images") and part.get("of"):
        return f"in epoch {r['epoch'] + 1} at image {part['images']}/{part['of']}"
    return f"epoch {r['epoch']}"


def format_table(r: dict, run_dir: str | Path) -> str:
    """The numbers of eval.json as a small table, nats per example and bits per dimension."""
    # A Bernoulli decoder on grey levels is a cross-entropy: the same formulas, bounds on no likelihood.
    grey = _no_likelihood(r.get("recon_kind"), r.get("binarize"))
    rows = [
        ("-ELBO form (no likelihood: above)" if grey else "-ELBO (upper bound on NLL)", -r["elbo"],
         r.get("elbo_se"), r["elbo_bits_per_dim"]),
        ("  reconstruction (cross-entropy)" if grey else "  reconstruction -log p(x|z)", r["recon"],
         r.get("recon_se"), r["recon_bits_per_dim"]),
        ("  KL(q(z|x) || p(z))", r["kl"], r.get("kl_se"), r["kl_bits_per_dim"]),
        (f"IWAE form (k={r['k']})" if grey else f"NLL, IWAE bound (k={r['k']})", r["nll_iwae"], r.get("nll_iwae_se"),
         r["bits_per_dim"]),
    ]

    def se(v) -> str:  # (an eval.json from before 2026-11-27 has none; one of one image is null)
        if not isinstance(v, (int, float)):
            return ""
        if 0 < v < 0.1:  # two significant digits, not 0.00 (a collapsed model's KL)
            return f"± {v:.{1 - math.floor(math.log10(v))}f}" if v >= 1e-4 else "± < 0.0001"
        return f"± {v:.2f}" if not v >= 1e5 else f"± {v:.1e}"

    from vaelab.evaluate import ACTIVE_THRESHOLD

    kl = r["kl_per_dim"]
    order = sorted(range(len(kl)), key=lambda i: -kl[i])
    # One rule for "dead", the active units' (a dimension can hold KL and still be dead: a
    # posterior variance away from 1 costs KL whether or not its mean moves with x).
    var = r.get("mean_variance_per_dim") or []
    inactive = {i for i, v in enumerate(var) if not v > ACTIVE_THRESHOLD}
    # two decimals, or two significant digits below 0.1 (0.0099 is not 0.01); * inactive
    top = ", ".join((f"z{i} {kl[i]:.2f}" if kl[i] >= 0.1 else f"z{i} {kl[i]:.2g}") + "*" * (i in inactive)
                    for i in order[:8])
    gap = "gap (-ELBO form - IWAE form)" if grey else "ELBO gap (-ELBO - NLL)"
    lines = [
        f"vaelab eval {run_dir}",
        f"  checkpoint   {r['checkpoint']} ({checkpoint_when(r)})",
        f"  data         test split, {r['n_examples']} image{'s' * (r['n_examples'] != 1)} of {r['dim']} pixels",
        f"  likelihood   {r['note']}",
        "",
        f"  {'':32s}{'nats/example':>14s}{'s.e.':>11s}{'bits/dim':>11s}",
        *(f"  {name:32s}{nats:14.2f}{se(err):>11s}{bits:11.4f}" for name, nats, err, bits in rows),
        f"  {gap:32s}{-r['elbo'] - r['nll_iwae']:14.2f}"
        + ("   (< 0: both are Monte Carlo estimates; raise --k)" if -r['elbo'] < r['nll_iwae'] else ""),
        "",
        f"  active units {r['active_units']} / {r['latent_size']}   (Cov_x E_q[z_i|x] > {ACTIVE_THRESHOLD}"
        + (f"; {'all' if len(inactive) == len(kl) else 'the other'} {len(inactive)}: dead"
           + (", in the traversals too)" if "traversals" in (r.get("pictures") or {}) else ")") if inactive else ")"),
        f"  KL per dim   {top}{' ...' if len(kl) > 8 else ''}   (nats, largest first"
        + ("; * inactive)" if inactive & set(order[:8]) else ")"),
    ]
    # (after --no-pictures, eval/ and eval.json's "pictures" are an earlier evaluation's, maybe of other weights)
    of = r.get("pictures_of") if isinstance(r.get("pictures_of"), dict) else {}
    other = of.get("examples_seen") != r.get("examples_seen")  # (the weights a run had at that point: any checkpoint)
    other_data = bool(of) and of.get("data_digest") not in (None, r.get("data_digest"))
    if r.get("pictures"):
        folder = Path(next(iter(r["pictures"].values()))).parent
        lines.append(f"  pictures     {folder}/: {', '.join(Path(p).name for p in r['pictures'].values())}"
                     + ((f"  (an earlier evaluation's, of {Path(str(of.get('checkpoint'))).name} at "
                         f"{of.get('examples_seen')} examples seen)" if of else "  (of weights eval.json does not name)")
                        if other else "  (an earlier evaluation's, on other data)" if other_data else ""))
        left_out = r.get("pictures_left_out") if isinstance(r.get("pictures_left_out"), dict) else {}
        lines += [f"               no {name}.png: {why}" for name, why in left_out.items()]
    these = r.get("pictures") and not (other or other_data)
    tb = (f", TensorBoard tags test/*{' and eval/*' if these else ''} at step "
          f"{r['examples_seen']}" if r.get("tensorboard") else "")
    lines.append(f"  written      {Path(run_dir) / 'eval.json'}{tb}  ({r['seconds']:.1f} s)")
    return "\n".join(lines)


# --- `vaelab eval` (and the argument helpers `vaelab sample` shares) -----------------------


def _checked(convert, ok, allowed: str):
    """An argparse type: convert the text, then keep it only if ok(value)."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}")
        return value
    return parse


positive_int = _checked(int, lambda v: v >= 1, "an integer >= 1")
folder_name = _checked(str, lambda v: v.strip() != "", "a folder (holding MNIST/raw/), not empty")
# (vaelab eval "$RUN" with RUN unset read the current folder: ".: not a vaelab run directory")
run_folder = _checked(str, lambda v: v.strip() != "", "a run's folder, not empty (an unset shell variable?)")
# (--out "$X" with X unset took the default place, unsaid: review)
out_path = _checked(str, lambda v: v.strip() != "", "a path, not empty (an unset shell variable?)")
importance_samples = _checked(int, lambda v: 1 <= v <= 10**6, "an integer in [1, 1000000] (the IWAE paper uses 5000)")
seed_int = _checked(int, lambda v: 0 <= v < 2**63, "an integer in [0, 2**63)")  # torch.Generator.manual_seed
non_negative_float = _checked(float, lambda v: math.isfinite(v) and v >= 0, "a number >= 0")


def device_name(text: str) -> str:
    if not _DEVICE_RE.match(text):
        raise argparse.ArgumentTypeError(f"allowed: {DEVICES}; got {text!r}")
    return text


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", type=run_folder,
                        help="a run directory (holds .hydra/ and checkpoints/)")
    parser.add_argument("--k", type=importance_samples, default=5000,
                        help="importance samples of the IWAE bound (default 5000, as Burda et al.)")
    parser.add_argument("--checkpoint", default="last",
                        help="last, best, or a file (name or path) in RUN_DIR/checkpoints/ (default last)")
    parser.add_argument("--device", type=device_name, default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    parser.add_argument("--seed", type=seed_int, default=0,
                        help="seed of the posterior samples and of eval/samples.png's prior draws (default 0)")
    parser.add_argument("--data-root", metavar="DIR", type=folder_name, default=None,
                        help="folder holding MNIST/raw/ (default: the run's data.root)")
    parser.add_argument("--no-pictures", action="store_true",
                        help="numbers only: eval/ and its TensorBoard images stay as an earlier evaluation drew them")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def eval_command(args: argparse.Namespace) -> int:
    run = Path(args.run_dir).resolve()
    if (run / ".hydra").is_dir() and not os.access(run, os.W_OK):  # before the work, not after
        print(f"vaelab eval: error: {args.run_dir}: not writable (eval writes eval.json, eval/ and "
              f"TensorBoard events there)", file=sys.stderr)
        return 2
    if any((run / "checkpoints").glob("*.pt")) and _training_now(run):  # allowed: a look at the weights so far
        try:  # (trainer.final_eval=false: no evaluation of its own will come)
            final = OmegaConf.select(OmegaConf.load(run / ".hydra" / "config.yaml"), "trainer.final_eval", default=True)
        except Exception:  # noqa: BLE001 - unreadable: the evaluation below says so
            final = True
        print(f"vaelab eval: note: {args.run_dir} is training now (another process holds it): this evaluates "
              f"its {args.checkpoint} checkpoint as it is now"
              + (", and the run's own end-of-training evaluation will replace eval.json" if final else ""),
              file=sys.stderr)
    from vaelab.errors import stop_signals_as_ctrl_c

    def written() -> tuple | None:  # (eval.json is replaced whole, by a rename: a new file)
        try:
            st = (run / "eval.json").stat()
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns
    before = written()
    try:
        with stop_signals_as_ctrl_c():  # a kill leaves the earlier evaluation as it was, as a Ctrl-C does
            result = evaluate_run(args.run_dir, k=args.k, device=args.device, checkpoint=args.checkpoint,
                                  progress=not args.no_progress, seed=args.seed, pictures=not args.no_pictures,
                                  data_root_override=args.data_root)
    except KeyboardInterrupt:
        now = ckpt_io.read_json(run / "eval.json") or {}
        try:  # (eval.json names the checkpoint as resolved: a link's target)
            mine = (args.k, args.seed, str(_checkpoint_path(run, args.checkpoint).resolve()))
        except RunDirError:
            mine = None
        if written() == before or (now.get("k"), now.get("seed"), now.get("checkpoint")) != mine:
            raise  # (not this one's: another process's, the run's own final one) cli says what the run has
        return _interrupted_once_written(run)
    except USER_ERRORS as e:
        print(f"vaelab eval: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a disk that fills up or turns read-only mid-way
        if e.errno == errno.ENAMETOOLONG:  # (a path given too long: no write; cli.main says so)
            raise
        print(f"vaelab eval: error: cannot write {e.filename or args.run_dir}: {e.strerror or e}", file=sys.stderr)
        return 1
    try:
        print(format_table(result, args.run_dir))
    except KeyboardInterrupt:
        return _interrupted_once_written(run)
    return 0


def _interrupted_once_written(run: Path) -> int:
    """A Ctrl-C after eval.json was written (its old event file's removal, the table): the new
    evaluation stands, whole; not "the run keeps the evaluation it held"."""
    print(f"vaelab eval: interrupted once the evaluation was written: {run / 'eval.json'} holds it", file=sys.stderr)
    return 130


# --- `vaelab sample` ----------------------------------------------------------------------


SAMPLE_N = 64  # `vaelab sample`'s grid: 8 x 8


def add_sample_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", type=run_folder,
                        help="a run directory (holds .hydra/ and checkpoints/)")
    # (--n too: argparse took it for an abbreviation of --nrow, and wrote 64 samples in rows of N)
    parser.add_argument("-n", "--n", type=_checked(int, lambda v: 1 <= v <= 10_000,
                                                   "an integer in [1, 10000] (one grid)"),
                        default=SAMPLE_N, help=f"number of samples, at most 10000 (default {SAMPLE_N})")
    parser.add_argument("--out", default=None, type=out_path,
                        help="image to write (PNG; another extension, e.g. .jpg, picks that format), not one of "
                             "vaelab eval's or the training's pictures (default "
                        "RUN_DIR/eval/samples_<checkpoint>_t<temperature>_seed<seed>.png)")
    # z = T * eps in float32: T near 1e37 overflows to inf and a black grid; past ~10 the
    # samples are noise anyway.
    temperature = _checked(float, lambda v: math.isfinite(v) and 0 < v <= 1000, "a number in (0, 1000]")
    parser.add_argument("--temperature", type=temperature, default=1.0,
                        help="z ~ N(0, T^2 I), T in (0, 1000]; below 1 trades variety for cleaner digits (default 1)")
    parser.add_argument("--seed", type=seed_int, default=0, help="seed of the latent draws (default 0)")
    parser.add_argument("--nrow", type=positive_int, default=None,
                        help="images per row (default ~sqrt(n), or a divisor of n near it where there is one, "
                             "so that the last row is full)")
    parser.add_argument("--checkpoint", default="last",
                        help="last, best, or a file (name or path) in RUN_DIR/checkpoints/ (default last)")
    parser.add_argument("--device", type=device_name, default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")


def _drawn_for_the_run(out: Path, run_dir: Path) -> str | None:
    """Why `out` is not for `vaelab sample` to write (one of the pictures `vaelab eval` or the
    training drew of the run, which eval.json and the training's epochs vouch for), else None.
    A grid of an earlier `vaelab sample` may be drawn again: the same command gives the same one."""
    target = out.resolve()  # (eval/ or samples/ may be links; names compared as a case-blind file system would)
    if target.parent == (run_dir / "eval").resolve() and target.name.lower() in {f"{n}.png" for n in EVAL_PICTURES}:
        return f"would overwrite eval/{target.name}, a picture `vaelab eval` drew of this run"
    if (run_dir / "samples").resolve() in target.parents:
        return f"{run_dir / 'samples'}/ holds the pictures the training drew"
    return None


def sample_command(args: argparse.Namespace) -> int:
    # The checkpoint is in the name: grids of best.pt and last.pt do not replace each other.
    which = args.checkpoint if args.checkpoint in ("last", "best") else Path(args.checkpoint).stem
    # ... and so is a grid's size when it is not the default: `-n 4` must not replace the 64-sample grid.
    size = f"_n{args.n}" if args.n != SAMPLE_N else ""
    if args.nrow:
        from vaelab.logger import grid_columns

        size += f"_nrow{args.nrow}" if args.nrow != grid_columns(args.n) else ""  # (the default's: the same grid)
    default = Path(args.run_dir) / "eval" / f"samples_{which}_t{args.temperature:g}_seed{args.seed}{size}.png"
    out = default
    if args.out:  # a wrong --out: one line before the model is loaded, not after the sampling
        from PIL import Image

        from vaelab.compare import image_path

        Image.init()  # (of the formats PIL registers, these write an RGB grid; others are stubs or limited)
        writable = [e for e in ("png", "jpg", "jpeg", "bmp", "gif", "tif", "tiff", "webp", "ppm", "pdf")
                    if Image.registered_extensions().get(f".{e}") in Image.SAVE]
        try:
            out = image_path(args.out, writable, default.name)  # (samples.png would be eval's own)
        except ValueError as e:
            print(f"vaelab sample: error: {e}", file=sys.stderr)
            return 2
        drawn = _drawn_for_the_run(out, Path(args.run_dir))
        inside = ckpt_io.inside_run_folder(out)  # another run's pictures are not to be replaced either
        if not drawn and inside:
            holder, part = inside
            if holder != Path(os.path.realpath(args.run_dir)):
                drawn = f"inside {part}/ of another run, {holder}, which holds what its training and evaluation wrote"
            elif part != "eval":  # (its checkpoints/ and .hydra/; samples/ is _drawn_for_the_run's)
                drawn = f"inside {part}/ of the run, which holds what its training wrote"
        if drawn:
            print(f"vaelab sample: error: --out {out}: {drawn}; give another name, such as {default}", file=sys.stderr)
            return 2
    try:
        _, model, _ = load_run(args.run_dir, args.checkpoint, args.device)
    except USER_ERRORS as e:
        print(f"vaelab sample: error: {e}", file=sys.stderr)
        return 2
    import torch
    from torchvision.utils import save_image

    from vaelab.logger import image_grid

    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(args.seed)
    x = model.sample(args.n, args.temperature, gen)
    grid = image_grid(x, model.image_shape, nrow=args.nrow)
    from PIL import Image

    Image.init()
    fmt = Image.registered_extensions()[out.suffix.lower()]  # (given: the file written is a temporary one;
    try:  # image_path took only a suffix PIL writes, and the default is .png)
        # whole or not at all: a Ctrl-C mid-write leaves a picture --out named as it was
        ckpt_io.write_atomic(out, lambda f: save_image(grid, f, format=fmt), through_link=bool(args.out))
    except (OSError, ValueError) as e:  # unwritable folder, unknown image extension
        why = e.strerror if isinstance(e, OSError) and e.strerror else e
        hint = "; write it elsewhere with --out PNG" if isinstance(e, OSError) and not args.out else ""
        print(f"vaelab sample: error: cannot write {out}: {why}{hint}", file=sys.stderr)
        return 2
    print(f"wrote {args.n} samples (temperature {args.temperature:g}, seed {args.seed}) to {out}")
    return 0
