"""The pictures of `vaelab eval` and `vaelab sample`: the right layout, dead dimensions marked,
written as PNGs and as TensorBoard images."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil

import pytest
import torch
from PIL import Image
from torch.utils.tensorboard import SummaryWriter
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vaelab.compare import kl_history
from vaelab.models import MLPVAE
from vaelab.evaluate_run import EVAL_PICTURES
from vaelab.pictures import (RED, TRAVERSAL_VALUES, curves_figure, figure_to_tensor, interpolations_figure,
                             interpolations_grid, kl_bars_figure, kl_history_figure, latents_scatter_figure,
                             make_pictures, manifold_figure, manifold_grid, reconstructions_figure,
                             reconstructions_grid, traversal_rows, traversals_figure, traversals_grid)
from vaelab.train import train

CELL = 28 + 2  # an MNIST image plus make_grid's padding


def _model(latent: int = 4) -> MLPVAE:
    torch.manual_seed(0)
    return MLPVAE(latent_size=latent, hidden=[16]).eval()


def test_traversal_rows_order_by_kl_and_mark_dead():
    kl = torch.tensor([0.5, 0.001, 2.0, 0.3])
    active = torch.tensor([True, False, True, False])  # dim 3 has KL but its mean never moves
    assert traversal_rows(kl, active, n=10) == ([2, 0, 3, 1], [False, False, True, True])
    # the top rows are all alive: the first dead dimension is shown too, as a last row
    assert traversal_rows(kl, active, n=2) == ([2, 0, 3], [False, False, True])
    # dead is inactive, as active_units and the KL chart count: a tiny KL alone is not dead
    assert traversal_rows(kl, torch.ones(4, dtype=torch.bool), n=2) == ([2, 0], [False, False])
    # an active dimension with less KL than the dead ones still comes first: it is what encodes x
    kl = torch.tensor([0.5, 0.4, 0.3, 0.02])
    assert traversal_rows(kl, torch.tensor([False, False, False, True]), n=2) == ([3, 0], [False, True])


def test_traversals_grid_sweeps_one_dimension_per_row_and_frames_dead_rows():
    model = _model()
    x = torch.rand(784)
    grid = traversals_grid(model, x, dims=[2, 0], dead=[False, True])
    v = TRAVERSAL_VALUES.shape[0]
    assert grid.shape == (3, 2 * CELL + 2, v * CELL + 2)
    # the dead row is framed in red, the live one is not
    assert torch.equal(grid[:, CELL + 1, CELL], RED) and torch.equal(grid[:, 2 * CELL + 1, 5], RED)
    assert not torch.equal(grid[:, 1, CELL], RED)
    # row 0, column j is decode(mu with z_2 = value j)
    mu = model.encode(x[None])[0][0]
    z = mu.clone()
    z[2] = TRAVERSAL_VALUES[-1]
    expected = model.decode(z[None]).reshape(28, 28)
    cell = grid[0, 2:2 + 28, (v - 1) * CELL + 2:(v - 1) * CELL + 2 + 28]
    torch.testing.assert_close(cell, expected.detach())


def test_grid_layouts():
    model = _model(latent=2)
    x = torch.rand(16, 784)
    assert reconstructions_grid(model, x, ncol=8).shape == (3, 4 * CELL + 2, 8 * CELL + 2)  # 2 x (in, out)
    assert interpolations_grid(model, x[:3], x[3:6], steps=10).shape == (3, 3 * CELL + 2, 12 * CELL + 2)
    assert manifold_grid(model, n=5).shape == (3, 5 * CELL + 2, 5 * CELL + 2)
    # manifold.png has its axes: z0 grows to the right, z1 upwards, at the prior's quantiles
    ax = manifold_figure(manifold_grid(model, n=20), model.image_shape).axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("z0", "z1")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["-1.64", "-0.56", "+0.56", "+1.64"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["+1.64", "+0.56", "-0.56", "-1.64"]
    # interpolations start and end at the real digits
    g = interpolations_grid(model, x[:1], x[1:2], steps=4)
    torch.testing.assert_close(g[0, 2:30, 2:30], x[0].reshape(28, 28))
    torch.testing.assert_close(g[0, 2:30, 5 * CELL + 2:5 * CELL + 30], x[1].reshape(28, 28))


@pytest.mark.parametrize("latent", [1, 2, 5])
def test_latents_scatter_for_any_latent_size(latent):
    from matplotlib import colormaps

    labels = torch.arange(200) % 7  # digits 0..6 present
    fig = latents_scatter_figure(torch.randn(200, latent), labels)
    (points,) = fig.axes[0].collections  # one scatter, in a shuffled order: no digit drawn over all others
    colours = torch.tensor(points.get_facecolors()[:, :3])
    digit = torch.cdist(colours, torch.tensor(colormaps["tab10"].colors, dtype=colours.dtype)).argmin(1)
    assert sorted(digit.tolist()) == sorted(labels.tolist()) and digit.tolist() != sorted(digit.tolist())
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == [str(d) for d in range(7)]


def test_latents_scatter_of_a_test_split_of_one_image():
    """Data of one's own with one test image: the final evaluation failed in this picture
    (one principal component, IndexError) after the run had trained."""
    fig = latents_scatter_figure(torch.randn(1, 5), torch.tensor([3]))
    assert fig.axes[0].get_xlabel() == "PC1 (0% of variance)" and fig.axes[0].get_ylabel() == "PC2 (0%)"


@pytest.mark.parametrize("n", [1, 5])
def test_make_pictures_of_a_test_split_under_8_images(tmp_path, n):
    """Reconstructions were left out under 8 test images, and interpolations under 2, without a
    word: now the reconstructions show all n, and what is left out is named (the table says it)."""
    images = torch.randint(0, 256, (n, 784), dtype=torch.uint8)
    out = make_pictures(_model(), images, torch.arange(n) % 10, torch.ones(4), torch.ones(4, dtype=torch.bool),
                        tmp_path)
    assert "reconstructions" in out["pictures"]
    with Image.open(out["pictures"]["reconstructions"]) as im:  # one row of n inputs above their reconstructions
        assert im.size[0] > 0
    if n == 1:
        assert "interpolations" not in out["pictures"]
        assert out["pictures_left_out"] == {"interpolations": "they need 2 test images, the split has 1"}
    else:
        assert "interpolations" in out["pictures"] and "pictures_left_out" not in out


@pytest.mark.parametrize("n", [1, 3, 8])
def test_a_narrow_reconstructions_figure_keeps_its_whole_title(n):
    """A test split of 1-7 images makes a figure 1-7 cells wide: its one-line title was cut at both ends."""
    model = _model()
    fig = reconstructions_figure(reconstructions_grid(model, torch.rand(n, 784), n), model.image_shape, 2)
    fig.canvas.draw()
    title = fig.axes[0].title
    box = title.get_window_extent()
    assert 0 <= box.x0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height
    assert title.get_text().replace("\n", " ") == "test images above their reconstructions (decoder mean at z = mu)"


def test_reconstructions_and_interpolations_say_what_each_row_and_column_is():
    """They were bare grids: nothing in the picture said which rows were the inputs, or which
    columns the real images at the ends of an interpolation."""
    model = _model()
    x = torch.rand(32, 784)
    fig = reconstructions_figure(reconstructions_grid(model, x, 8), model.image_shape, 8)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["test images", "reconstructions"] * 4
    assert "reconstructions" in ax.get_title()
    fig = interpolations_figure(interpolations_grid(model, x[:3], x[3:6], steps=4), model.image_shape, 4)
    cols = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert cols == ["image a", "t = 0", "0.33", "0.67", "1", "image b"]  # (bare numbers did not say they were t)
    assert len(fig.axes[0].get_yticklabels()) == 3


def test_curves_show_a_runs_loss_kl_and_active_units_against_examples_seen():
    scalars = {"train/loss": [(64, 120.0), (128, 100.0), (192, 95.0)], "epoch/train_loss": [(192, 105.0)],
               "epoch/val_loss": [(192, 99.0), (384, 90.0), (384, 91.0)],  # a resumed run's repeat: the last
               "train/kl": [(64, 3.0)], "epoch/val_kl": [(192, 4.0)], "epoch/active_units": [(192, 2.0)]}
    fig = curves_figure(scalars, "the loss is recon + beta x KL (loss.beta=4)")
    loss, kl, active = fig.axes
    assert [ax.get_title() for ax in fig.axes] == ["loss", "KL", "active units"]
    assert [line.get_label() for line in loss.get_lines()] == ["train, per log point", "train, epoch mean",
                                                               "validation"]
    val = loss.get_lines()[2]
    assert list(val.get_xdata()) == [192, 384] and list(val.get_ydata()) == [99.0, 91.0]
    assert loss.get_xlabel() == "examples seen" and loss.get_ylabel() == "loss (nats per example)"
    assert active.get_ylabel() == "dimensions" and fig._suptitle.get_text().startswith("the loss is recon + beta")
    assert curves_figure({"train/loss": [(64, 1.0)]}) is None  # no validation yet: no picture
    # each series in a colour of its own, with or without the per-log-point curve (review: they swapped)
    assert [line.get_color() for line in loss.get_lines()] == ["tab:blue", "tab:orange", "tab:green"]
    epoch_only = {k: v for k, v in scalars.items() if k.startswith("epoch/")}
    assert [line.get_color() for line in curves_figure(epoch_only).axes[0].get_lines()] == ["tab:orange", "tab:green"]
    # a run whose every unit collapsed: whole numbers on 0 to 1.5, not 0.00, 0.05, ... on 0 to 0.5
    dead = curves_figure({**scalars, "epoch/active_units": [(192, 0), (384, 0)]}).axes[2]
    assert dead.get_ylim() == (-0.3, 1.5) and [t for t in dead.get_yticks() if -0.3 <= t <= 1.5] == [0, 1]
    # an eval of an earlier checkpoint: where its weights were taken, on curves that go on past them (review)
    marked = curves_figure(scalars, at=192).axes[0]
    [mark] = [line for line in marked.get_lines() if line.get_label() == "checkpoint evaluated"]
    assert list(mark.get_xdata()) == [192, 192]
    unmarked = curves_figure(scalars, at=384).axes[0]  # (the last point's: nothing past it)
    assert "checkpoint evaluated" not in [line.get_label() for line in unmarked.get_lines()]
    # data.val_size=0: the "validation" points are the test split's
    test = curves_figure(scalars, split="test").axes[0]
    assert [line.get_label() for line in test.get_lines()][2] == "test"


def test_the_kl_history_puts_each_dimension_in_a_row_by_its_last_kl_and_names_the_inactive_in_red():
    """kl_by_dim.png: which dimensions carry information, and when the others collapsed (the
    brief's KL per dimension over training, which TensorBoard drew at checkpoint epochs only)."""
    history = [(3, [0.1, 2.0, 0.5], [0.0, 0.5, 0.2]), (4, [0.0, 3.0, 0.9], [0.005, 0.6, 0.3])]
    fig = kl_history_figure(history)
    ax = fig.axes[0]
    rows = [(t.get_text(), t.get_color()) for t in ax.get_yticklabels()]
    assert rows == [("z1", "black"), ("z2", "black"), ("z0", "red")]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["3", "4"]  # the epochs the file holds
    image = ax.get_images()[0].get_array()
    assert image.tolist() == [[2.0, 3.0], [0.5, 0.9], [0.1, 0.0]]  # rows in that order, epochs across
    assert "2 of 3 active at epoch 4" in ax.get_title() and "labels in red: inactive" in ax.get_title()
    assert "2 of 3" not in kl_history_figure([(1, [0.1, 2.0, 0.5], None)]).axes[0].get_title()  # no variances
    many = kl_history_figure([(1, [float(d) for d in range(64)], [1.0] * 64)]).axes[0]
    assert many.get_yticklabels() == [] and many.get_ylabel().startswith("64 latent dimensions")  # (no row index)
    # past 40 rows, no labels: a red mark beside each inactive row (it had none, and active and inactive
    # rows need not sit apart: rows go by KL, activity by the posterior mean's variance; review)
    var = [1.0] * 64
    var[62] = var[5] = 0.0  # dimensions 62 and 5: rows 1 and 58 by KL (63 first)
    many = kl_history_figure([(1, [float(d) for d in range(64)], var)]).axes[0]
    assert list(many.get_yticks()) == [1, 58] and [t.get_text() for t in many.get_yticklabels()] == ["", ""]
    assert all(t.tick1line.get_color() == "red" for t in many.yaxis.get_major_ticks())
    assert "62 of 64 active at epoch 1 on the validation images" in many.get_title()
    assert many.get_title().endswith("; red marks: inactive")
    test = kl_history_figure(history, split="test").axes[0].get_title()  # (data.val_size=0: the test split's)
    assert test.startswith("test KL per latent dimension") and "on the test images" in test
    assert kl_history_figure([]) is None
    # a line of another length (edited by hand) is left out, not the picture (review); 1 dimension, 3 in tall
    one = kl_history_figure([(1, [0.1, 0.2], None), (2, [0.3], [0.5]), (3, [0.1], [0.0])])
    assert [t.get_text() for t in one.axes[0].get_xticklabels()] == ["2", "3"] and one.get_figheight() == 3.0
    assert one.axes[0].get_ylabel() == "1 latent dimension, by epoch 3's KL"


def test_kl_history_reads_epochs_jsonl_and_leaves_out_what_it_cannot_draw(tmp_path):
    lines = [{"epoch": 1, "examples_seen": 10, "kl_per_dim": [0.5, 0.25], "mean_variance_per_dim": [0.1, 0.0]},
             {"epoch": 2, "examples_seen": 20, "kl_per_dim": [0.5, None]},  # (edited by hand)
             {"epoch": 3, "examples_seen": 30, "kl_per_dim": [0.75, 0.0], "mean_variance_per_dim": [0.1]}]
    (tmp_path / "epochs.jsonl").write_text("\n".join(json.dumps(e) for e in lines) + '\n{"epoch": 4, "exa\n')
    assert kl_history(tmp_path) == [(1, [0.5, 0.25], [0.1, 0.0]), (3, [0.75, 0.0], None)]
    assert kl_history(tmp_path / "nothing") == []


def test_make_pictures_names_the_curves_and_kl_history_it_cannot_draw(tmp_path):
    """A run stopped in its first epoch has no validation point: no curves.png, and the table
    named only the missing kl_by_dim.png (review)."""
    model = _model(latent=2)
    images, labels = torch.randint(0, 256, (4, 784), dtype=torch.uint8), torch.arange(4)
    out = make_pictures(model, images, labels, torch.tensor([1.5, 0.0]), torch.tensor([True, False]),
                        tmp_path / "eval", scalars={"train/loss": [(64, 1.0)]}, kl_history=[])
    assert set(out["pictures_left_out"]) == {"curves", "kl_by_dim"} and "curves" not in out["pictures"]
    assert out["pictures_left_out"]["curves"].startswith("the run has no epoch's validation loss on record")
    # not asked for (scalars and kl_history not given): nothing to say
    out = make_pictures(model, images, labels, torch.tensor([1.5, 0.0]), torch.tensor([True, False]), tmp_path / "e2")
    assert "pictures_left_out" not in out


def test_make_pictures_writes_pngs_and_tensorboard_images(tmp_path):
    model = _model(latent=2)
    images = torch.randint(0, 256, (40, 784), dtype=torch.uint8)
    labels = torch.arange(40) % 10
    kl = torch.tensor([1.5, 0.0])
    writer = SummaryWriter(log_dir=str(tmp_path))
    scalars = {"epoch/val_loss": [(5, 90.0), (7, 80.0)]}
    out = make_pictures(model, images, labels, kl, torch.tensor([True, False]), tmp_path / "eval", writer, step=7,
                        scalars=scalars, kl_history=[(1, [0.5, 0.1], [0.2, 0.0]), (2, [1.5, 0.0], [0.3, 0.0])])
    writer.close()
    names = {"samples", "reconstructions", "traversals", "interpolations", "manifold", "latents_scatter", "curves",
             "kl_by_dim"}
    assert set(out["pictures"]) == names == set(EVAL_PICTURES)  # those `vaelab sample --out` leaves alone
    assert out["traversal_dims"] == [0, 1] and out["dead_dims"] == [1]
    with Image.open(tmp_path / "eval" / "samples.png") as im:
        assert im.size == (8 * CELL + 2, 8 * CELL + 2)  # 64 samples, 8 x 8
    acc = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    acc.Reload()
    assert {f"eval/{n}" for n in names} <= set(acc.Tags()["images"])
    assert acc.Images("eval/traversals")[0].step == 7


def _sample_cli(argv):
    """`vaelab sample ARGV` through vaelab's dispatcher, in this process; returns the exit code."""
    from vaelab.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["sample", *map(str, argv)])
    return exc.value.code


def test_vaelab_sample(make_cfg, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    train(make_cfg(["latent_size=2", "model.size=small", "trainer.epochs=1", "trainer.final_eval=false"]), run)
    out = tmp_path / "grid.png"
    assert _sample_cli([str(run), "-n", "16", "--out", str(out), "--temperature", "0.8", "--seed", "0"]) == 0
    with Image.open(out) as im:
        assert im.size == (4 * CELL + 2, 4 * CELL + 2)
    first = out.read_bytes()
    assert _sample_cli([str(run), "-n", "16", "--out", str(out), "--temperature", "0.8", "--seed", "0"]) == 0
    assert out.read_bytes() == first  # a seed gives the same picture
    assert _sample_cli([str(run), "-n", "16", "--out", str(out), "--temperature", "0.8", "--seed", "1"]) == 0
    assert out.read_bytes() != first
    assert _sample_cli([str(run), "--n", "3", "--nrow", "1"]) == 0  # default: RUN_DIR/eval/...
    # (--n was taken for an abbreviation of --nrow: 64 samples in rows of 3, review)
    assert _sample_cli([str(run), "-n", "3", "--checkpoint", str(run / "checkpoints" / "best.pt")]) == 0
    assert _sample_cli([str(run), "-n", "3", "--checkpoint", "best", "--nrow", "3"]) == 0  # 3: the default's columns
    # one grid per checkpoint: best.pt's does not replace last.pt's
    assert {p.name for p in (run / "eval").iterdir()} == {"samples_last_t1_seed0_n3_nrow1.png",
                                                          "samples_best_t1_seed0_n3.png"}
    # the default grid is not replaced by a smaller one
    assert _sample_cli([str(run), "-n", "64"]) == 0 and _sample_cli([str(run), "-n", "4"]) == 0
    with Image.open(run / "eval" / "samples_last_t1_seed0.png") as im:
        assert im.size == (8 * CELL + 2, 8 * CELL + 2)
    assert _sample_cli([str(run), "-n", "3", "--out", str(run / "eval" / "samples_best_t1_seed0.png")]) == 0
    shutil.copytree(run, tmp_path / "other")
    capsys.readouterr()

    for argv, message in (([str(tmp_path / "nope")], "no such run directory"),
                          ([str(run), "-n", "0"], "argument -n/--n: must be an integer in [1, 10000]"),
                          ([str(run), "-n", str(10**8)], "argument -n/--n: must be an integer in [1, 10000]"),
                          ([str(run), "--temperature", "-1"], "argument --temperature: must be a number in (0, 1000]"),
                          ([str(run), "--temperature", "1e300"],
                           "argument --temperature: must be a number in (0, 1000]"),
                          ([str(run), "--out", str(tmp_path / "grid.nope")], "unknown image format 'nope'; allowed:"),
                          ([str(run), "--out", f"{tmp_path}/"], f"is a directory; give a file name such as "
                                                               f"{tmp_path / 'samples_last_t1_seed0.png'}"),
                          # (not eval/samples.png, which is eval's own and would be refused next)
                          ([str(run), "--out", str(run / "eval")], f"is a directory; give a file name such as "
                                                                   f"{run / 'eval' / 'samples_last_t1_seed0.png'}"),
                          ([str(run), "--out", str(run / "eval" / "Samples.PNG")], "would overwrite eval/Samples.PNG"),
                          ([str(run), "--out", "/proc/nope/grid.png"], "--out /proc/nope/grid.png: "),
                          # the pictures of `vaelab eval` (eval.json names their checkpoint) and training
                          ([str(run), "--checkpoint", "best", "--out", str(run / "eval" / "samples.png")],
                           f"--out {run / 'eval' / 'samples.png'}: would overwrite eval/samples.png, a picture "
                           f"`vaelab eval` drew of this run; give another name, such as "
                           f"{run / 'eval' / 'samples_best_t1_seed0.png'}"),
                          ([str(run), "--out", str(run / "eval" / "latents_scatter")], "would overwrite eval/"),
                          ([str(run), "--out", str(run / "samples" / "samples_epoch0001.png")],
                           f"{run / 'samples'}/ holds the pictures the training drew; give another name"),
                          # ... nor its checkpoints/ and .hydra/
                          ([str(run), "--out", str(run / "checkpoints" / "x.png")],
                           "inside checkpoints/ of the run, which holds what its training wrote"),
                          # ... nor another run's (tmp_path / "other" is a copy of the run)
                          ([str(run), "--out", str(tmp_path / "other" / "samples" / "samples_epoch0001.png")],
                           f"inside samples/ of another run, {tmp_path / 'other'}, which holds what its training "
                           f"and evaluation wrote; give another name"),
                          ([str(run), "--checkpoint", str(tmp_path / "other" / "checkpoints" / "last.pt")],
                           f"to use another run's checkpoint, give that run's folder ({tmp_path / 'other'}) as "
                           f"RUN_DIR")):
        code = _sample_cli(argv)
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and err.startswith("vaelab sample: error: ") and message in err, err
    # a run on a read-only mount: the line says how to write the grid elsewhere

    def read_only(grid, path, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(path))
    monkeypatch.setattr("torchvision.utils.save_image", read_only)
    assert _sample_cli([str(run), "-n", "3"]) == 2
    grid = run / "eval" / "samples_last_t1_seed0_n3.png"
    assert capsys.readouterr().err == (f"vaelab sample: error: cannot write {grid}: Read-only file system; write it "
                                       f"elsewhere with --out PNG\n")
    # a Ctrl-C part-way through writing a grid over one --out names leaves that one whole
    def half_then_ctrl_c(grid, f, *args, **kwargs):
        with (open(f, "wb") if isinstance(f, (str, os.PathLike)) else contextlib.nullcontext(f)) as out_file:
            out_file.write(b"\x89PNG half")
        raise KeyboardInterrupt
    monkeypatch.setattr("torchvision.utils.save_image", half_then_ctrl_c)
    drawn = out.read_bytes()
    assert _sample_cli([str(run), "-n", "16", "--out", str(out)]) == 130
    assert out.read_bytes() == drawn and sorted(p.name for p in tmp_path.iterdir()) == ["grid.png", "other", "run"]
    # --out a link: written through it, as before the write became atomic (it replaced the link with a file)
    monkeypatch.undo()
    (tmp_path / "link.png").symlink_to(out)
    assert _sample_cli([str(run), "-n", "4", "--out", str(tmp_path / "link.png")]) == 0
    assert (tmp_path / "link.png").is_symlink() and out.read_bytes() != drawn
    # ... but not one in the run's folder that the user did not name (the default file): it is replaced
    kept = tmp_path / "kept.pt"
    kept.write_bytes(b"a checkpoint kept aside")
    default = run / "eval" / "samples_last_t1_seed0_n4.png"
    default.unlink(missing_ok=True)
    default.symlink_to(kept)
    assert _sample_cli([str(run), "-n", "4"]) == 0
    assert not default.is_symlink() and kept.read_bytes() == b"a checkpoint kept aside"


def test_traversal_labels_stay_inside_the_picture():
    """The longest label (a 4-digit dead dimension) was cut at the left edge."""
    dims, dead = [*range(10), 1023], [False] * 10 + [True]  # ten live rows and a dead one, as vaelab eval draws
    kl = torch.zeros(1024)
    kl[dims] = torch.tensor([2.5, 1.5, 0.25, 0.2, 0.15, 0.11, 0.097, 0.095, 0.092, 0.089, 0.0099])
    grid = torch.rand(3, len(dims) * 30 + 2, TRAVERSAL_VALUES.shape[0] * 30 + 2)
    fig = traversals_figure(grid, dims, dead, kl, (1, 28, 28), "test image 0 (digit 7)")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [*fig.axes[0].get_yticklabels(), fig.axes[0].title]
    assert "z1023  KL 0.0099  dead" in [t.get_text() for t in texts]
    assert fig.axes[0].get_title().endswith("\n11 of 1024 dimensions shown")  # not read as all
    for t in texts:
        box = t.get_window_extent(renderer)
        assert 0 <= box.x0 and box.x1 <= fig.bbox.width, t.get_text()


def test_grids_have_no_empty_cells_where_a_divisor_allows():
    """experiment=seed's 10 samples were a 4 x 3 grid with two empty cells; the seed drew 5 x 2."""
    from vaelab.logger import grid_columns, image_grid

    assert [grid_columns(n) for n in (10, 12, 64, 7)] == [5, 4, 8, 3]
    assert image_grid(torch.zeros(10, 784), (1, 28, 28)).shape == (3, 2 * CELL + 2, 5 * CELL + 2)


def test_kl_bars_are_apart_and_ticked_at_whole_dimensions():
    """Two active dimensions were one blue block on an axis ticked -0.50, -0.25, ... 1.50."""
    fig = kl_bars_figure(torch.tensor([1.0, 0.9]), torch.tensor([True, True]))
    img = (figure_to_tensor(fig) * 255).round()
    blue = (img[0] == 31) & (img[1] == 119) & (img[2] == 180)
    cols = (blue.sum(0) > 20).int()  # columns inside a bar
    assert (cols[1:] - cols[:-1] == 1).sum() == 2  # two bars start: a gap between them
    ticks = [t for t in fig.axes[0].get_xticks() if -0.5 <= t <= 1.5]
    assert ticks == [0, 1]


def test_kl_bars_colour_the_active_dimensions_and_keep_their_order():
    """Dimension 0 carries 1 nat and is active; 1 carries 0.5 and is not: a blue bar on the
    left twice as tall as a grey one on the right."""
    img = (figure_to_tensor(kl_bars_figure(torch.tensor([1.0, 0.5]), torch.tensor([True, False]))) * 255).round()
    blue = (img[0] == 31) & (img[1] == 119) & (img[2] == 180)  # matplotlib's tab:blue
    grey = (img[0] == 166) & (img[1] == 166) & (img[2] == 166)  # "0.65"
    bar_b, bar_g = blue.sum(0) > 20, grey.sum(0) > 20  # columns inside a bar (not anti-aliased text)
    cols_b, cols_g = bar_b.nonzero().flatten(), bar_g.nonzero().flatten()
    assert len(cols_b) and len(cols_g) and cols_b.max() < cols_g.min()
    height_b, height_g = blue[:, bar_b].any(1).sum().item(), grey[:, bar_g].any(1).sum().item()
    assert abs(height_b / height_g - 2) < 0.1  # (the x axis line hides a pixel or two of each)


def test_a_failed_write_in_tensorboards_writer_thread_is_not_a_second_traceback(monkeypatch):
    """The writer thread kept the OSError for the training to raise (as its one line), and its
    death printed it as a traceback too; other threads' errors still reach the hook before."""
    import queue
    import threading

    from tensorboard.summary.writer.event_file_writer import _AsyncWriterThread

    from vaelab.logger import quiet_writer_thread_errors

    printed = []
    monkeypatch.setattr(threading, "excepthook", lambda args: printed.append(args.thread))
    quiet_writer_thread_errors()
    quiet_writer_thread_errors()  # (once only, however many writers)

    class Full(_AsyncWriterThread):
        def _run(self):
            raise OSError(28, "No space left on device")
    writer_thread = Full(queue.Queue(), None, 1)
    other = threading.Thread(target=lambda: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    for t in (writer_thread, other):
        t.start()
        t.join()
    assert isinstance(writer_thread.exception, OSError)  # kept for the writer's next call
    assert printed == [other]


def test_the_kl_charts_epochs_are_labelled_at_an_even_step():
    """np.linspace's rounded positions labelled 20 epochs 1, 3, 5, 7, 9, 12, ...: epochs 10 and 11
    looked left out (review)."""
    from vaelab.pictures import epoch_ticks

    def labels(n):
        epochs = list(range(1, n + 1))
        return [epochs[i] for i in epoch_ticks(epochs)]
    assert labels(20) == list(range(2, 21, 2)) and labels(10) == list(range(1, 11))
    assert labels(21) == [1, 5, 10, 15, 20] and labels(3280) == [1, *range(500, 3001, 500)]
    assert [[3, 4, 9][i] for i in epoch_ticks([3, 4, 9])] == [3, 4, 9]  # (the epochs a resume kept)


def test_the_curves_show_points_at_zero_active_units_and_whole_numbers_of_examples():
    """Points at 0 active units were cut in half by the axis, and a run whose points share one x
    got ticks 182.5, 185.0, ... (review)."""
    from vaelab.pictures import curves_figure

    fig = curves_figure({"epoch/val_loss": [(192, 5.0)], "epoch/active_units": [(192, 0.0)],
                         "epoch/val_kl": [(192, 0.1)]})
    for ax in fig.axes:
        assert all(float(t).is_integer() for t in ax.get_xticks())
    units = next(ax for ax in fig.axes if ax.get_title() == "active units")
    assert units.get_ylim()[0] < 0
