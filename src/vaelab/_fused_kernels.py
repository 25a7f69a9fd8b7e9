"""fused_loss.py's Triton kernels: the reparameterisation with the KL, and the reconstruction
term, forward and backward. A module of their own because it imports triton (fused_loss.py
imports it on first use) and because Triton resolves the names a kernel uses in its module.
The arithmetic and its derivatives are losses.py's; fused_loss.py says what each returns."""
import triton
import triton.language as tl

# Triton's exp and log (what inductor's kernels use: within an ulp or two of torch's CUDA
# kernels, not bit-equal) and IEEE division (its default `/` is approximate)


@triton.jit
def _tile(mu_ptr, lv_ptr, B, L, s_mu, s_lv, ROWS: tl.constexpr, COLS: tl.constexpr):
    """This program's tile of ROWS examples x COLS latent dimensions: its row and column indices,
    the mask of those inside (B, L), and mu and logvar there (rows s_mu and s_lv numbers apart)."""
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)[:, None]
    cols = tl.program_id(1) * COLS + tl.arange(0, COLS)[None, :]
    mask = (rows < B) & (cols < L)
    mu = tl.load(mu_ptr + rows * s_mu + cols, mask=mask, other=0.0)
    lv = tl.load(lv_ptr + rows * s_lv + cols, mask=mask, other=0.0)
    return rows, cols, mask, mu, lv


# The batch size (B, and n = B x D) is not specialised on (Triton compiles a variant per
# divisibility of an int argument by 16): an epoch's last, smaller batch would otherwise compile
# a second variant in the middle of epoch 1.
@triton.jit(do_not_specialize=["B"])
def reparam_kl_fwd(mu_ptr, lv_ptr, eps_ptr, z_ptr, kl_ptr, B, L, s_mu, s_lv, divisor,
                   ROWS: tl.constexpr, COLS: tl.constexpr):
    # one program per tile of ROWS examples x COLS latent dimensions: writes z, and the tile's
    # KL summed over its rows / divisor (the batch mean when one row block covers the batch)
    rows, cols, mask, mu, lv = _tile(mu_ptr, lv_ptr, B, L, s_mu, s_lv, ROWS, COLS)
    eps = tl.load(eps_ptr + rows * L + cols, mask=mask, other=0.0)
    std = tl.exp(0.5 * lv)
    tl.store(z_ptr + rows * L + cols, mu + eps * std, mask=mask)
    kl = 0.5 * (mu * mu + tl.exp(lv) - 1.0 - lv)  # losses.kl_per_dim
    kl = tl.where(mask, kl, 0.0)
    tl.store(kl_ptr + tl.program_id(0) * L + cols, tl.div_rn(tl.sum(kl, axis=0)[None, :], divisor),
             mask=cols < L)


@triton.jit(do_not_specialize=["B"])
def reparam_kl_bwd(mu_ptr, lv_ptr, eps_ptr, gz_ptr, gkd_ptr, gk_ptr, dmu_ptr, dlv_ptr, B, L, s_mu, s_lv,
                   batch, HAS_GZ: tl.constexpr, HAS_GKD: tl.constexpr, HAS_GK: tl.constexpr,
                   ROWS: tl.constexpr, COLS: tl.constexpr):
    rows, cols, mask, mu, lv = _tile(mu_ptr, lv_ptr, B, L, s_mu, s_lv, ROWS, COLS)
    # the KL's gradient per column: d(mean over the batch) = g / B per example
    g = tl.zeros([1, COLS], dtype=tl.float32)
    if HAS_GKD:
        g += tl.load(gkd_ptr + cols, mask=cols < L, other=0.0)
    if HAS_GK:
        g += tl.load(gk_ptr)
    g = tl.div_rn(g, batch) * 0.5  # (batch: B as a float)
    dmu = g * (2.0 * mu)
    dlv = g * tl.exp(lv) - g
    if HAS_GZ:  # z = mu + eps * exp(lv / 2): dz/dmu = 1, dz/dlv = eps * exp(lv / 2) / 2
        gz = tl.load(gz_ptr + rows * L + cols, mask=mask, other=0.0)
        eps = tl.load(eps_ptr + rows * L + cols, mask=mask, other=0.0)
        dmu += gz
        dlv += gz * eps * tl.exp(0.5 * lv) * 0.5
    tl.store(dmu_ptr + rows * L + cols, dmu, mask=mask)
    tl.store(dlv_ptr + rows * L + cols, dlv, mask=mask)


# D, the pixels of an image, is a constant of the compiled kernel: one variant per model, as
# the probe (fused_loss.kernels_work) compiles it. (As a runtime int, Triton's interpreter
# before 3.7 could not take it in range() with NumPy >= 2.4: the CPU tests failed there.)
@triton.jit
def recon_fwd(logit_ptr, x_ptr, out_ptr, D: tl.constexpr, BCE: tl.constexpr, BLOCK: tl.constexpr):
    # one program per example: its cost summed over the D pixels (losses.recon_nll)
    base = tl.program_id(0).to(tl.int64) * D
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, D, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < D
        lg = tl.load(logit_ptr + base + offs, mask=mask, other=0.0)
        x = tl.load(x_ptr + base + offs, mask=mask, other=0.0)
        if BCE:  # (1 - x) l - log sigmoid(l), log sigmoid(l) = min(l, 0) - log1p(exp(-|l|))
            t = tl.exp(-tl.abs(lg))
            u = 1.0 + t  # Kahan's log1p(t) from log: a few ulp where log(1 + t) would lose t
            log1p = tl.where(u == 1.0, t, tl.log(u) * tl.div_rn(t, tl.where(u == 1.0, 1.0, u - 1.0)))
            c = (1.0 - x) * lg - (tl.minimum(lg, 0.0) - log1p)
        else:  # (sigmoid(l) - x)^2
            d = tl.div_rn(1.0, 1.0 + tl.exp(-lg)) - x
            c = d * d
        acc += tl.where(mask, c, 0.0)
    tl.store(out_ptr + tl.program_id(0), tl.sum(acc, axis=0))


@triton.jit(do_not_specialize=["n"])
def recon_bwd(logit_ptr, x_ptr, g_ptr, dl_ptr, n, batch, BCE: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    lg = tl.load(logit_ptr + offs, mask=mask, other=0.0)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    g = tl.div_rn(tl.load(g_ptr), batch)  # d(mean over the batch); batch: B as a float
    s = tl.div_rn(1.0, 1.0 + tl.exp(-lg))
    if BCE:
        dl = g * (s - x)
    else:  # d/dl (s - x)^2 = 2 (s - x) s (1 - s)
        dl = g * (2.0 * (s - x)) * (1.0 - s) * s
    tl.store(dl_ptr + offs, dl, mask=mask)
