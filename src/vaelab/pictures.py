"""The pictures that explain a VAE, as PNGs in RUN_DIR/eval/ and TensorBoard images eval/<name>.

- samples.png          decoder means of z ~ N(0, T^2 I) (T = temperature, 1 = the prior)
- reconstructions.png  test digits (odd rows) above their reconstructions, the decoder mean at z = mu,
                       each row labelled
- traversals.png       one test digit's mean code with dimension i set to -3 .. +3 (prior std units),
                       one row per dimension, active ones first, each kind by KL: 10 rows (and
                       the first dead one, when those 10 hold none; the title says how many of how
                       many); dead dimensions (inactive: Cov_x E_q[z_i|x] <= 0.01, the test
                       active_units counts by) dimmed, framed in red, labelled "dead"
- interpolations.png   a real test digit at each end, decoder means along the straight line
                       between their posterior means in between, the columns labelled by t
- manifold.png         (latent_size == 2 only) decoder means on a grid of z at the Gaussian
                       quantiles 0.05 .. 0.95 (Kingma & Welling 2014, fig. 4), with its axes:
                       z0 grows to the right, z1 upwards (as in latents_scatter.png)
- latents_scatter.png  test-set posterior means coloured by digit label: the two latent
                       dimensions when latent_size == 2, else the first two principal components
- curves.png           the run's loss, KL and active units against examples seen, from its
                       TensorBoard scalars and epochs.jsonl (its epoch points with logger.tensorboard=false)
- kl_by_dim.png        the validation KL of each latent dimension at each epoch (epochs.jsonl), one
                       row per dimension in order of the last epoch's KL: which dimensions carry
                       information, and when the others collapsed

`vaelab sample RUN_DIR -n 64 --out grid.png --temperature 0.8` (in evaluate_run.py) draws the
first kind alone.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import torch

from vaelab.data import to_float
from vaelab.evaluate import ACTIVE_THRESHOLD
from vaelab.logger import image_grid, save_png

TRAVERSAL_VALUES = torch.linspace(-3.0, 3.0, 11)  # in units of the prior's std (= 1)
RED = torch.tensor([1.0, 0.0, 0.0])


# --- grids (C, H, W) in [0, 1] -----------------------------------------------------------


@torch.no_grad()
def samples_grid(model, n: int = 64, temperature: float = 1.0, generator: torch.Generator | None = None
                 ) -> torch.Tensor:
    return image_grid(model.sample(n, temperature, generator), model.image_shape)


@torch.no_grad()
def reconstructions_grid(model, x: torch.Tensor, ncol: int = 8) -> torch.Tensor:
    """x (N, D) with N a multiple of ncol -> rows of inputs, each followed by its reconstructions."""
    n, d = x.shape
    rec = model.decode(model.encode(x)[0])  # decoder mean at z = mu
    pairs = torch.stack([x.reshape(-1, ncol, d), rec.reshape(-1, ncol, d)], dim=1)  # (N/ncol, 2, ncol, D)
    return image_grid(pairs.reshape(-1, d), model.image_shape, nrow=ncol)


@torch.no_grad()
def interpolations_grid(model, xa: torch.Tensor, xb: torch.Tensor, steps: int = 10) -> torch.Tensor:
    """xa, xb (P, D) -> P rows: xa, decode((1 - t) mu_a + t mu_b) for t = 0 .. 1, xb."""
    p, d = xa.shape
    mu_a, mu_b = model.encode(xa)[0], model.encode(xb)[0]  # (P, L)
    t = torch.linspace(0, 1, steps, device=xa.device)[None, :, None]  # (1, S, 1)
    z = (1 - t) * mu_a[:, None] + t * mu_b[:, None]  # (P, S, L)
    dec = model.decode(z.reshape(p * steps, -1)).reshape(p, steps, d)
    rows = torch.cat([xa[:, None], dec, xb[:, None]], dim=1)  # (P, S + 2, D)
    return image_grid(rows.reshape(-1, d), model.image_shape, nrow=steps + 2)


@torch.no_grad()
def manifold_values(n: int = 20) -> torch.Tensor:
    """z at the Gaussian quantiles 0.05 .. 0.95: each of the manifold's cells covers the same prior mass."""
    return torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, n))


def manifold_grid(model, n: int = 20) -> torch.Tensor:
    """The decoder over a 2-D latent space at manifold_values(n). Columns: z0 increasing;
    rows: z1 decreasing downwards."""
    device = next(model.parameters()).device
    q = manifold_values(n)
    z1, z0 = torch.meshgrid(q.flip(0), q, indexing="ij")  # (n, n) each, row-major like the image
    z = torch.stack([z0, z1], dim=-1).reshape(n * n, 2).to(device)
    return image_grid(model.decode(z), model.image_shape, nrow=n)


def traversal_rows(kl_per_dim: torch.Tensor, active: torch.Tensor, n: int = 10) -> tuple[list[int], list[bool]]:
    """Dimensions to traverse, the active ones first, each kind by most KL, and whether each is
    dead. (A dead dimension can hold more KL than an active one: a posterior variance away from
    1 costs KL whether or not its mean moves with x; ranked by KL alone, ten such rows hid the one
    dimension that encodes something.) When the n rows hold no dead dimension but the model has
    some, the first dead one is added as a last row, so the picture shows what a dead dimension
    does (nothing)."""
    kl = kl_per_dim.float().cpu()
    dead = ~active.cpu().bool()  # the active units' test, as the KL chart and active_units count them
    order = sorted(range(len(kl)), key=lambda i: (bool(dead[i]), -float(kl[i])))
    rows = order[:n]
    if dead.any() and not dead[rows].any():
        rows.append(next(i for i in order if dead[i]))
    return rows, [bool(dead[i]) for i in rows]


@torch.no_grad()
def traversals_grid(model, x: torch.Tensor, dims: list[int], dead: list[bool],
                    values: torch.Tensor = TRAVERSAL_VALUES) -> torch.Tensor:
    """x (D,) one digit -> a grid with one row per dimension in dims: the mean code of x with
    that dimension set to each value. Dead rows are dimmed and framed in red."""
    mu = model.encode(x[None])[0][0]  # (L,)
    r, v = len(dims), values.shape[0]
    z = mu.repeat(r, v, 1)  # (R, V, L)
    z[torch.arange(r)[:, None], torch.arange(v)[None, :], torch.tensor(dims)[:, None]] = values.to(z)
    imgs = model.decode(z.reshape(r * v, -1)).float().clamp(0, 1).reshape(r * v, *model.image_shape).cpu()
    imgs = imgs.expand(-1, 3, -1, -1).clone() if imgs.shape[1] == 1 else imgs
    from torchvision.utils import make_grid  # here, not at the top: torchvision takes ~1.4 s to import

    pad = 2
    grid = make_grid(imgs, nrow=v, padding=pad, pad_value=1.0)  # (3, H, W)
    h = model.image_shape[1] + pad
    for row, is_dead in enumerate(dead):
        if not is_dead:
            continue
        y0, y1 = row * h, (row + 1) * h + pad
        band = grid[:, y0:y1]
        band.mul_(0.35)  # dimmed
        for region in (band[:, :pad], band[:, -pad:], band[:, :, :pad], band[:, :, -pad:]):
            region.copy_(RED[:, None, None].expand_as(region))
    return grid


# --- matplotlib figures (no pyplot: no global state, no display needed) ------------------


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def figure_to_tensor(fig) -> torch.Tensor:
    """(3, H, W) in [0, 1], for SummaryWriter.add_image."""
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    return torch.from_numpy(rgba[..., :3].copy()).permute(2, 0, 1).float() / 255


def labelled_grid_figure(grid: torch.Tensor, image_shape: tuple, row_labels: list[str], col_labels: list[str],
                         title: str, label_width: float = 1.0):
    """A grid of image cells (image_grid's, padding 2) with a label beside each row and under each
    column, and a title: what each cell is, in the picture itself. label_width: inches for the
    row labels."""
    h, w = image_shape[1] + 2, image_shape[2] + 2
    width = label_width + 1.2 + 0.42 * len(col_labels)
    # (the title wrapped to the figure: a narrow one, a test split of 1-7 images, cut it at both ends)
    lines = [line for part in title.split("\n") for line in textwrap.wrap(part, max(20, int(13 * width))) or [""]]
    fig = _figure(width, 0.9 + 0.42 * len(row_labels) + 0.15 * (len(lines) - 1))
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_xticks([w * (j + 0.5) + 1 for j in range(len(col_labels))])
    ax.set_xticklabels(col_labels, fontsize=7)
    ax.set_yticks([h * (i + 0.5) + 1 for i in range(len(row_labels))])
    ax.set_yticklabels(row_labels, fontsize=7)
    ax.tick_params(length=0)
    ax.set_title("\n".join(lines), fontsize=8)
    fig.tight_layout()
    return fig


def reconstructions_figure(grid: torch.Tensor, image_shape: tuple, rows: int):
    """reconstructions_grid's picture, each row labelled input or reconstruction."""
    return labelled_grid_figure(grid, image_shape, ["test images", "reconstructions"] * (rows // 2),
                                [""] * (grid.shape[2] // (image_shape[2] + 2)),
                                "test images above their reconstructions (decoder mean at z = mu)")


def interpolations_figure(grid: torch.Tensor, image_shape: tuple, steps: int):
    """interpolations_grid's picture, its columns labelled: the two test images, and t between."""
    ts = [f"{t:.2g}" for t in torch.linspace(0, 1, steps).tolist()]
    ts[0] = f"t = {ts[0]}"  # (the columns' numbers are t: the title's (1 - t) mu_a + t mu_b)
    return labelled_grid_figure(grid, image_shape, [""] * (grid.shape[1] // (image_shape[1] + 2)),
                                ["image a", *ts, "image b"],
                                "decoder means at (1 - t) mu_a + t mu_b, each row between two test images",
                                label_width=0.2)


def traversals_figure(grid: torch.Tensor, dims: list[int], dead: list[bool], kl_per_dim: torch.Tensor,
                      image_shape: tuple, what: str, values: torch.Tensor = TRAVERSAL_VALUES):
    """The traversal grid with each row labelled by its dimension and KL, columns by value."""
    labels = []
    for d, is_dead in zip(dims, dead):
        kl = float(kl_per_dim[d])
        labels.append(f"z{d}  KL {kl:.2f}" if kl >= 0.1 else f"z{d}  KL {kl:.2g}")  # 0.0099 not "0.01"
        labels[-1] += "  dead" if is_dead else ""
    title = f"latent traversals of {what}: z_i set to -3 .. +3 (prior std), rows: active first, then by KL (nats)"
    if len(dims) < len(kl_per_dim):  # the rest are left out: say so, or the grid reads as all of them
        title += f"\n{len(dims)} of {len(kl_per_dim)} dimensions shown"
    fig = labelled_grid_figure(grid, image_shape, labels,
                               [f"{round(float(val), 6) + 0.0:+.1f}" for val in values],  # no "-0.0"
                               title, label_width=1.0)  # room for 'z1023  KL 0.0099  dead'
    for label, is_dead in zip(fig.axes[0].get_yticklabels(), dead):
        if is_dead:
            label.set_color("red")
    return fig


def manifold_figure(grid: torch.Tensor, image_shape: tuple, n: int = 20):
    """The manifold grid with its axes: which way z0 and z1 grow, and at what values."""
    h, w = image_shape[1] + 2, image_shape[2] + 2
    q = manifold_values(n)
    fig = _figure(1.0 + 0.3 * n, 0.8 + 0.3 * n)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    picks = sorted({0, n // 4, n - 1 - n // 4, n - 1})  # symmetric about 0, as the quantiles are
    ax.set_xticks([w * (j + 0.5) + 1 for j in picks])
    ax.set_xticklabels([f"{float(q[j]):+.2f}" for j in picks], fontsize=7)
    ax.set_yticks([h * (i + 0.5) + 1 for i in picks])
    ax.set_yticklabels([f"{float(q.flip(0)[i]):+.2f}" for i in picks], fontsize=7)  # z1 grows upwards
    ax.set_xlabel("z0", fontsize=8)
    ax.set_ylabel("z1", fontsize=8)
    ax.set_title("decoder means over the 2-D latent space, z at the prior's quantiles 0.05 .. 0.95", fontsize=8)
    fig.tight_layout()
    return fig


def kl_bars_figure(kl_per_dim: torch.Tensor, active: torch.Tensor, split: str = "validation"):
    """The KL of each latent dimension (nats), by index, the active ones in colour: which
    latents carry information, and over a run's epochs which ones collapse. split: the images
    they are of ("test" where data.val_size=0 makes the test split the validation one)."""
    kl = kl_per_dim.float().cpu().numpy()
    act = active.cpu().numpy().astype(bool)
    fig = _figure(8.0, 2.6)
    ax = fig.add_subplot(1, 1, 1)
    # Bar i spans i - 0.4 .. i + 0.4, with an empty step between bars so neighbours do not merge.
    edges = (np.arange(len(kl))[:, None] + np.array([-0.4, 0.4])).ravel()
    for show, colour in ((act, "tab:blue"), (~act, "0.65")):  # two artists, not one per bar: 4x faster at 256
        heights = np.zeros(2 * len(kl) - 1)
        heights[::2] = np.where(show, kl, 0.0)
        ax.stairs(heights, edges, fill=True, color=colour)
    ax.set_xlim(-0.5, len(kl) - 0.5)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # dimensions are whole numbers (not 0.25)
    ax.set_xlabel("latent dimension", fontsize=8)
    ax.set_ylabel("KL (nats)", fontsize=8)
    ax.tick_params(labelsize=7)
    rest = ", the rest grey" if not act.all() else ""
    ax.set_title(f"KL per latent dimension on the {split} images: {int(act.sum())} of {len(kl)} active "
                 f"(blue){rest}", fontsize=8)
    fig.subplots_adjust(left=0.08, right=0.99, bottom=0.17, top=0.9)  # (tight_layout: a third of the cost)
    return fig


def kl_history_figure(history: list[tuple[int, list[float], list[float] | None]], threshold: float = 0.01,
                      split: str = "validation"):
    """The validation KL of each latent dimension (nats) at each epoch, as a heatmap: epochs
    across, one row per dimension, in order of the last epoch's KL (largest at the top), so
    that the dimensions that carry information sit together and the collapsed ones below them.
    history: [(epoch, KL per dimension, variance of its posterior mean or None)], as
    compare.kl_history reads it from epochs.jsonl; the last epoch's variances above `threshold`
    (evaluate.ACTIVE_THRESHOLD) are its active dimensions, labelled black, the rest red (past 40
    rows, which get no labels, a red mark beside each inactive row). An epoch with another
    number of dimensions than the last is left out (a line edited by hand). split: the images
    the KL is of ("test" where data.val_size=0). None without a point."""
    if not history:
        return None
    history = [h for h in history if len(h[1]) == len(history[-1][1])]  # (one line of another length: not all)
    epochs = [e for e, _, _ in history]
    kl = np.array([v for _, v, _ in history], dtype=np.float64).T  # (L, epochs)
    last_var = history[-1][2]
    active = None if last_var is None else [v > threshold for v in last_var]
    order = np.argsort(-kl[:, -1], kind="stable")
    n = kl.shape[0]
    width, height = 8.0, max(3.0, 2.2 + 0.12 * n) if n <= 40 else 5.0  # (3 in at least: the axis's label)
    fig = _figure(width, height)
    # Margins in inches, set by hand: a layout engine took 0.3-0.4 s of every evaluation's 0.4-0.8 s here
    left, right, bottom, top = 0.85, 1.05, 0.5, 0.55 if last_var is None else 0.7  # (room for the title's 3 lines)
    ax = fig.add_axes((left / width, bottom / height, 1 - (left + right) / width, 1 - (bottom + top) / height))
    cax = fig.add_axes((1 - (right - 0.15) / width, bottom / height, 0.15 / width, 1 - (bottom + top) / height))
    # (epoch i's column spans i +- 0.5 of its index: epochs kept after a resume need not be 1, 2, 3, ...)
    from matplotlib.colors import PowerNorm

    # (a square-root scale from 0: a few informative dimensions would leave the rest one dark colour,
    # where an active dimension of 0.03 nats and a collapsed one of 0.001 should differ)
    im = ax.imshow(kl[order], aspect="auto", interpolation="nearest", cmap="viridis",
                   norm=PowerNorm(0.5, vmin=0.0, vmax=max(float(kl.max()), 1e-12)),
                   extent=(-0.5, len(epochs) - 0.5, n - 0.5, -0.5))
    ax.set_xticks(*zip(*[(i, str(epochs[i])) for i in epoch_ticks(epochs)]))
    ax.set_xlabel("epoch", fontsize=8)
    if n <= 40:  # (one label a row while they stay legible; past that none: a row's place is not its index)
        ax.set_yticks(range(n), [f"z{d}" for d in order])
        if active is not None:
            for label, d in zip(ax.get_yticklabels(), order):
                label.set_color("black" if active[d] else "red")
    elif active is not None:  # (a red mark beside each inactive row: active and inactive need not sit apart,
        # rows go by KL and activity by the posterior mean's variance)
        ax.set_yticks([i for i, d in enumerate(order) if not active[d]], [])
        ax.tick_params(axis="y", colors="red", length=6, width=1.2)
    else:
        ax.set_yticks([])
    ax.set_ylabel(f"{n} latent dimension{'s' * (n != 1)}, by epoch {epochs[-1]}'s KL", fontsize=8)
    ax.tick_params(labelsize=7)
    title = f"{split} KL per latent dimension at each epoch (nats)"
    if active is not None:  # (active by the variance of the posterior mean, as active_units: not by the KL)
        red = "; labels in red: inactive" if n <= 40 else "; red marks: inactive"
        # (in two lines: in one it ran wider than the axes, over the row labels' title; review)
        title += (f"\n{sum(active)} of {n} active at epoch {epochs[-1]} on the {split} images\n(posterior mean's "
                  f"variance across them > {threshold:g})" + (red if not all(active) else ""))
    ax.set_title(title, fontsize=8)
    bar = fig.colorbar(im, cax=cax)
    bar.set_label("KL (nats, square-root scale)", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    return fig


# (tag, legend label, style, colour) of each panel of curves_figure: the loss, its KL term, active
# units. A colour of its own for each series: from matplotlib's cycle, a run logged without the
# per-log-point curve (logger.tensorboard=false) drew its epoch means in another run's colours.
CURVES = (("loss", (("train/loss", "train, per log point", "-", "tab:blue"),
                    ("epoch/train_loss", "train, epoch mean", "o-", "tab:orange"),
                    ("epoch/val_loss", "validation", "s-", "tab:green"))),
          ("KL", (("train/kl", "train, per log point", "-", "tab:blue"),
                  ("epoch/train_kl", "train, epoch mean", "o-", "tab:orange"),
                  ("epoch/val_kl", "validation", "s-", "tab:green"))),
          ("active units", (("epoch/active_units", "validation", "s-", "tab:green"),)))


def epoch_ticks(epochs: list[int], most: int = 10) -> list[int]:
    """The positions in `epochs` to label: about `most`, at the multiples of an even step (1, 2,
    5, 10, 20, 50, ...), and the first; evenly spaced positions rounded read as epochs left out
    (20 epochs: 1, 3, 5, 7, 9, 12, ..., review)."""
    step = next(s * 10 ** k for k in range(12) for s in (1, 2, 5) if len(epochs) / (s * 10 ** k) <= most)
    picks = [i for i, e in enumerate(epochs) if e % step == 0]
    if not picks or (picks[0] != 0 and epochs[picks[0]] - epochs[0] > step / 2):
        picks = [0, *picks]  # (the first epoch, where it is not next to a labelled one)
    return picks


def curves_figure(scalars: dict[str, list[tuple[int, float]]], note: str = "", split: str = "validation",
                  at: int | None = None):
    """A run's training curves from its TensorBoard scalars ({tag: [(examples seen, value)]}):
    the loss, the KL and the active units against examples seen, with `note` (lines) above; the
    validation points named by `split` ("test" where data.val_size=0); `at`, the examples seen of
    the checkpoint evaluated, is marked where the run went on past it. None without a validation
    point."""
    if not scalars.get("epoch/val_loss"):
        return None
    fig = _figure(12.0, 3.6)
    axes = fig.subplots(1, len(CURVES), sharex=True)  # (one x range: a panel of one point had its own)
    for ax, (what, lines) in zip(axes, CURVES):
        for tag, label, style, colour in lines:
            pts = sorted(dict(scalars.get(tag, [])).items())  # one value per step (a resumed run's repeats: the last)
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, style, label=split if label == "validation" else label, color=colour, markersize=4,
                        linewidth=1, alpha=0.5 if style == "-" else 1)
        if at is not None and any(max(line.get_xdata()) > at for line in ax.get_lines()):
            # (an eval of an earlier checkpoint: the curves go on past the weights the other pictures show)
            ax.axvline(at, color="0.35", linestyle=":", linewidth=1.2, label="checkpoint evaluated")
        ax.set_xlabel("examples seen", fontsize=8)
        ax.set_ylabel("dimensions" if what == "active units" else f"{what} (nats per example)", fontsize=8)
        ax.set_title(what, fontsize=9)
        from matplotlib.ticker import MaxNLocator

        # (whole numbers: where every point has one x, the ticks read 182.5, 185.0, ..., review; as many as
        # matplotlib's own AutoLocator would place)
        ax.xaxis.set_major_locator(MaxNLocator(nbins="auto", steps=[1, 2, 2.5, 5, 10], integer=True))
        if what == "active units" and ax.get_lines():  # from 0: how many of them collapsed, in whole numbers
            # (at least 0 to 1.5: all 0, a collapsed run's, gave ticks 0.00, 0.05, ... on 0 to 0.5; from just
            # below 0, where points at 0 were cut in half by the axis, review)
            ax.set_ylim(-0.3, max(1, max(max(line.get_ydata()) for line in ax.get_lines())) + 0.5)
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if ax.get_lines():  # (a run logged without one of them: an empty panel, no legend)
            ax.legend(fontsize=7)
    if note:  # one note a line: one long line was cut at both ends
        fig.suptitle(note, fontsize=8)
        fig.set_figheight(3.6 + 0.12 * (note.count("\n") + 1))
    fig.set_layout_engine("constrained")  # (it makes room for the notes; tight_layout left a gap under them)
    return fig


def latents_scatter_figure(mu: torch.Tensor, labels: torch.Tensor):
    """Posterior means (N, L) in 2-D, coloured by digit: the dimensions themselves when L <= 2,
    else the first two principal components (explained variance in the axis labels)."""
    mu = mu.cpu().double()  # in that order: MPS has no float64
    labels = labels.cpu()
    n, latent = mu.shape
    if latent == 1:
        jitter = torch.rand(n, generator=torch.Generator().manual_seed(0)) * 0.6 - 0.3
        xy = torch.stack([mu[:, 0], labels.double() + jitter], dim=1)
        axes, title = ("z0 (posterior mean)", "digit (jittered)"), "test-set posterior means"
    elif latent == 2:
        xy = mu
        axes, title = ("z0", "z1"), "test-set posterior means"
    else:
        centred = mu - mu.mean(0)
        _, s, vh = torch.linalg.svd(centred, full_matrices=False)
        xy = centred @ vh[:2].T  # (N, 2); (N, 1) for a test split of one image, which has one component
        xy = torch.cat([xy, xy.new_zeros(n, 2 - xy.shape[1])], dim=1)
        share = torch.cat([s.pow(2) / s.pow(2).sum().clamp_min(1e-300), s.new_zeros(2)])  # (one image: 0 variance)
        axes = (f"PC1 ({100 * share[0]:.0f}% of variance)", f"PC2 ({100 * share[1]:.0f}%)")
        title = f"test-set posterior means, first two principal components of {latent}"
    from matplotlib import colormaps

    fig = _figure(6.0, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    from matplotlib.lines import Line2D

    cmap = colormaps["tab10"]
    # One scatter in a shuffled order: drawn digit by digit, the last digits would cover the first.
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    ax.scatter(xy[order, 0].numpy(), xy[order, 1].numpy(), s=3, alpha=0.6, c=cmap(labels[order].numpy() % 10),
               rasterized=True)
    handles = [Line2D([], [], ls="", marker="o", markersize=4, color=cmap(d), label=str(d))
               for d in range(10) if (labels == d).any()]
    ax.legend(handles=handles, title="digit", fontsize=7, title_fontsize=8, frameon=False,
              loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the points, not over them
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


# --- everything at once (used by `vaelab eval`) -------------------------------------------


# The pictures make_pictures draws, eval/<name>.png (manifold for a 2-d latent space only; curves
# where the run logged events).
EVAL_PICTURES = ("samples", "reconstructions", "traversals", "interpolations", "manifold", "latents_scatter", "curves",
                 "kl_by_dim")


@torch.no_grad()
def make_pictures(model, images: torch.Tensor, labels: torch.Tensor, kl_per_dim: torch.Tensor,
                  active: torch.Tensor, out_dir: str | Path, writer=None, step: int = 0, seed: int = 0,
                  scalars: dict | None = None, curves_note: str = "", kl_history: list | None = None,
                  split: str = "validation") -> dict:
    """All pictures of a trained model on a split (uint8 images (N, D), labels (N,)), written to
    out_dir as PNGs and, given a SummaryWriter, as images eval/<name> at `step`.
    kl_per_dim (L,) and active (L,) bool come from evaluate.elbo_stats; scalars, the run's
    TensorBoard scalars, give curves.png (curves_figure); kl_history, compare.kl_history's
    [(epoch, KL per dimension, posterior-mean variance per dimension)] from its epochs.jsonl,
    kl_by_dim.png (kl_history_figure; given and empty, a note why there is none); split names
    the images of the run's validation numbers ("test" where data.val_size=0). Returns {name:
    path} and the traversed dimensions."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    n = images.shape[0]
    written: dict = {}

    def put(name: str, img: torch.Tensor, fig=None) -> None:
        path = out_dir / f"{name}.png"
        # (a figure: the pixels figure_to_tensor has drawn; fig.savefig drew it again, 0.5 s of an eval's 1.2)
        save_png(img if fig is None else np.asarray(fig.canvas.buffer_rgba()), path)
        if writer is not None:
            writer.add_image(f"eval/{name}", img, step)
        written[name] = str(path.resolve())  # as eval.json's checkpoint: not relative to the shell

    put("samples", samples_grid(model, 64, 1.0, gen))
    ncol = min(8, n)  # (a test split of one's own with under 8 images: all of them, in one row)
    n_rec = min(32, n // ncol * ncol)
    if n_rec:
        fig = reconstructions_figure(reconstructions_grid(model, to_float(images[:n_rec]), ncol), model.image_shape,
                                     2 * n_rec // ncol)
        put("reconstructions", figure_to_tensor(fig), fig)
    dims, dead = traversal_rows(kl_per_dim, active)
    grid = traversals_grid(model, to_float(images[0]), dims, dead)
    fig = traversals_figure(grid, dims, dead, kl_per_dim, model.image_shape,
                            what=f"test image 0 (digit {int(labels[0])})")
    put("traversals", figure_to_tensor(fig), fig)
    pairs = min(8, n // 2)
    left_out = {}  # {picture: why}: the table says so, rather than leave it to be missed
    if not pairs:
        left_out["interpolations"] = f"they need 2 test images, the split has {n}"
    if pairs:
        steps = 10
        fig = interpolations_figure(interpolations_grid(model, to_float(images[:pairs]),
                                                        to_float(images[pairs:2 * pairs]), steps),
                                    model.image_shape, steps)
        put("interpolations", figure_to_tensor(fig), fig)
    if model.latent_size == 2:
        fig = manifold_figure(manifold_grid(model), model.image_shape)
        put("manifold", figure_to_tensor(fig), fig)
    mu = torch.cat([model.encode(to_float(images[i:i + 2000]))[0] for i in range(0, n, 2000)])
    fig = latents_scatter_figure(mu, labels)
    put("latents_scatter", figure_to_tensor(fig), fig)
    fig = curves_figure(scalars or {}, curves_note, split, at=step or None)  # (0: no checkpoint given)
    if fig is not None:
        put("curves", figure_to_tensor(fig), fig)
    elif scalars is not None:  # (given: the table says why there is none, as of kl_by_dim)
        left_out["curves"] = ("the run has no epoch's validation loss on record (one stopped in its first epoch "
                              "has none)")
    fig = kl_history_figure(kl_history or [], ACTIVE_THRESHOLD, split)
    if fig is not None:
        put("kl_by_dim", figure_to_tensor(fig), fig)
    elif kl_history is not None:  # (given, and empty: the table says why there is none)
        left_out["kl_by_dim"] = ("no epoch up to this checkpoint's has its KL per dimension in the run's "
                                 "epochs.jsonl (one stopped in its first epoch has none; runs trained before "
                                 "2026-11-27 have no epochs.jsonl)")
    model.train(was_training)
    return {"pictures": written, "traversal_dims": dims, "dead_dims": [d for d, x in zip(dims, dead) if x],
            **({"pictures_left_out": left_out} if left_out else {})}
