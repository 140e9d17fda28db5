"""Least-squares reconstruction of the layer that consumes a pruned channel group.

On calibration images, the ORIGINAL network's input X to each consumer is sampled (a k x k conv's
input is unfolded, so each row is one output position's receptive field: C * k * k features) and its
Gram matrix G = X^T X is accumulated. Because the consumer's original output is Y = X W^T, the refit of
the weights W' restricted to the kept input columns S,
    min ||X[:, S] W'^T - X W^T||,
is the solution of G[S, S] W'^T = G[S, :] W^T. Only G is stored: no features, no outputs.

That re-fit sees the original network's inputs, so each layer's error adds to the next. The sequential
re-fit (`collect_targets`, `refit_sequentially`) corrects it, as in He et al.'s channel pruning: one
forward pass of the PRUNED network over a batch of calibration images re-fits every conv consumer, in
execution order, on the inputs the pruned network actually gives it, against the original network's
outputs at the same sampled positions; BatchNorm statistics are re-estimated in the same pass.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from amc.engine.hooks import forward_hooks


def padded_input(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """`x` padded exactly as `conv` pads it before convolving: its padding (numbers, or "same", which may be
    one pixel more on the right and bottom) and its padding mode (zeros, reflect, replicate, circular), so that
    an unfold with no padding reads the patches the conv reads."""
    if conv.padding == "same":
        pads = []
        for k, d in zip(reversed(conv.kernel_size), reversed(conv.dilation)):  # F.pad takes the last dim first
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
    elif conv.padding == "valid":
        pads = [0, 0, 0, 0]
    else:
        ph, pw = conv.padding
        pads = [pw, pw, ph, ph]
    if not any(pads):
        return x
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    return F.pad(x, pads, mode=mode)


def _rows(module: nn.Module, x: torch.Tensor, positions: int, generator: torch.Generator) -> torch.Tensor:
    """Sampled input rows of a consumer: [B * positions, C*k*k] for a conv, [B, in] for a Linear."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    cols = F.unfold(padded_input(module, x), module.kernel_size, module.dilation, 0, module.stride)  # [B, D, L]
    batch, dim, length = cols.shape
    if positions < length:
        pick = torch.randint(length, (batch, positions), generator=generator).to(cols.device)
        cols = torch.gather(cols, 2, pick.unsqueeze(1).expand(batch, dim, positions))
    return cols.transpose(1, 2).reshape(-1, dim)


def collect_grams(
    model: nn.Module,
    consumers: Iterable[str],
    batches: Iterable[torch.Tensor],
    *,
    positions: int = 10,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Gram matrices G = X^T X (float64, [D, D]) of the inputs of the named conv/Linear layers.

    `batches` yields normalized input batches of the calibration images; `positions` output positions
    are sampled per image and conv layer (the reference uses 10).
    """
    modules = dict(model.named_modules())
    grams: dict[str, torch.Tensor] = {}
    generator = torch.Generator().manual_seed(seed)

    def hook(name: str):
        def accumulate(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            rows = _rows(module, inputs[0], positions, generator).double()
            gram = rows.T @ rows
            grams[name] = grams[name] + gram if name in grams else gram
        return accumulate

    model.eval()
    with forward_hooks({modules[name]: hook(name) for name in consumers}), torch.no_grad():
        for batch in batches:
            model(batch)
    return grams


def _ridged(gram: torch.Tensor, scale: float = 1e-6) -> torch.Tensor:
    """`gram` + a ridge of `scale` times its mean diagonal on the diagonal, so a rank-deficient G solves."""
    ridge = scale * gram.diagonal().mean().clamp_min(1e-12)
    return gram + ridge * torch.eye(len(gram), dtype=gram.dtype, device=gram.device)


def refit(weight: torch.Tensor, gram: torch.Tensor, keep_cols: torch.Tensor) -> torch.Tensor:
    """Least-squares weights over the kept input columns, shape [O, len(keep_cols)] (flattened).

    `weight` is the original weight flattened to [O, D]; `gram` is [D, D]; `keep_cols` indexes D.
    A small ridge keeps a rank-deficient G solvable; if the solve still fails, the original weights of
    the kept columns are returned (plain channel selection), never NaN.
    """
    w = weight.double()
    gram_ss = gram[keep_cols][:, keep_cols]
    g_ss = _ridged(gram_ss)
    rhs = gram[keep_cols] @ w.T  # [S, O]
    # G + ridge*I is symmetric positive definite: Cholesky solves it about twice as fast as LU
    factor, info = torch.linalg.cholesky_ex(g_ss)
    if info.item() == 0:
        solved = torch.cholesky_solve(rhs, factor)
    else:  # numerically indefinite even with the ridge
        solved = torch.linalg.lstsq(g_ss, rhs).solution
    # the ridge biases the solve: where plain selection already reproduces the layer (e.g. only dead channels
    # were removed) the re-fit may be the worse of the two, and a re-fit must never add error
    if not torch.isfinite(solved).all() or _fit_error(solved.T, gram_ss, rhs) > _fit_error(w[:, keep_cols], gram_ss, rhs):
        return weight[:, keep_cols].clone()
    return solved.T.to(weight.dtype)


def _fit_error(w: torch.Tensor, gram: torch.Tensor, rhs: torch.Tensor) -> float:
    """||X W^T - Y||^2 up to the constant ||Y||^2, from the Gram matrix G = X^T X [D, D] and X^T Y [D, O]:
    tr(W G W^T) - 2 tr(W X^T Y), for weights `w` [O, D]."""
    return float((w @ gram * w).sum() - 2 * (w * rhs.T).sum())


def greedy_order(weight: torch.Tensor, gram: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """Input channels of a consumer ordered most important first, by greedy least-squares elimination.

    `weight` [O, D] is the consumer's flattened weight, `gram` [D, D] its input Gram matrix, `blocks`
    [n, b] the columns of D fed by each of the n channels. Starting from all channels, the channels whose
    removal raises the re-fitted reconstruction error ||X[:, S] W'^T - X W^T||^2 least are removed first
    (the error increase of dropping block j is tr(A_j^T P_jj^-1 A_j), A = the re-fitted weights and
    P = G[S, S]^-1, both downdated in place of a new solve). The order is nested, so the top k of it is
    the greedy selection for every count k at once. Groups of more than 64 channels drop 1/64 of the
    remaining channels per step.
    """
    n, b = blocks.shape
    cols = blocks.reshape(-1)
    weight, gram = weight.cpu(), gram.cpu()  # a one-time ranking: on the CPU, whatever device the model is on
    inverse = torch.linalg.inv(_ridged(gram[cols][:, cols]))  # P, [m*b, m*b] over the alive channels
    fitted = inverse @ (gram[cols] @ weight.double().T)  # A, [m*b, O]
    alive = torch.arange(n)
    removed: list[torch.Tensor] = []
    while len(alive) > 1:
        m = len(alive)
        diag = inverse.reshape(m, b, m, b)[torch.arange(m), :, torch.arange(m), :]  # [m, b, b]
        per_block = fitted.reshape(m, b, -1)
        increase = (per_block * torch.linalg.solve(diag, per_block)).sum((1, 2))
        drop = torch.zeros(m, dtype=torch.bool)
        drop[torch.argsort(increase, stable=True)[: max(1, (m - 1) // 64)]] = True
        removed.append(alive[drop][increase[drop].argsort(descending=True)])
        rows_drop, rows_keep = drop.repeat_interleave(b), ~drop.repeat_interleave(b)
        cross = inverse[rows_keep][:, rows_drop]
        solve = torch.linalg.solve(inverse[rows_drop][:, rows_drop], torch.cat([cross.T, fitted[rows_drop]], 1))
        fitted = fitted[rows_keep] - cross @ solve[:, len(cross):]
        inverse = inverse[rows_keep][:, rows_keep] - cross @ solve[:, : len(cross)]
        alive = alive[~drop]
    return torch.cat([alive, *reversed(removed)])


@dataclass
class Target:
    """What a conv consumer must reproduce: the original network's output at sampled positions.

    `positions` [B, P] are flat output positions (row-major over H_out x W_out) of each calibration image;
    `output` [B * P, O] the original conv's output there, without its bias (float32).
    """

    positions: torch.Tensor
    output: torch.Tensor


def _patch_rows(conv: nn.Conv2d, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Input rows of `conv` at the output `positions` [B, P]: [B * P, C*k*k], ordered as `F.unfold`'s."""
    (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
    padded = padded_input(conv, x)
    batch, channels, _, width = padded.shape
    out_w = (width - dw * (kw - 1) - 1) // sw + 1
    device = positions.device
    rows = (positions // out_w)[..., None] * sh + torch.arange(kh, device=device) * dh  # [B, P, kh]
    cols = (positions % out_w)[..., None] * sw + torch.arange(kw, device=device) * dw  # [B, P, kw]
    image = torch.arange(batch, device=device)[:, None, None, None]
    patches = padded[image, :, rows[..., :, None], cols[..., None, :]]  # [B, P, kh, kw, C]
    return patches.permute(0, 1, 4, 2, 3).reshape(-1, channels * kh * kw)


def _convs(model: nn.Module, consumers: Iterable[str]) -> dict[str, nn.Conv2d]:
    """The named layers that are ordinary (not grouped) convs: those the sequential re-fit handles."""
    modules = dict(model.named_modules())
    return {name: modules[name] for name in consumers
            if isinstance(modules[name], nn.Conv2d) and modules[name].groups == 1}


@torch.no_grad()
def collect_targets(model: nn.Module, consumers: Iterable[str], x: torch.Tensor, *, positions: int = 64,
                    seed: int = 0) -> dict[str, Target]:
    """The original outputs of the named conv consumers (Linear and grouped ones are skipped) on calibration
    images `x` [B, C, H, W] (normalized), at `positions` sampled output positions per image (all, if fewer)."""
    generator = torch.Generator().manual_seed(seed)
    targets: dict[str, Target] = {}

    def hook(name: str):
        def record(conv: nn.Conv2d, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            flat = output.flatten(2)  # [B, O, L]
            if conv.bias is not None:
                flat = flat - conv.bias[:, None]
            batch, out_channels, length = flat.shape
            if positions < length:
                # drawn on the CPU whatever the device, so every device samples the same positions
                pick = torch.randint(length, (batch, positions), generator=generator).to(flat.device)
            else:
                pick = torch.arange(length, device=flat.device).expand(batch, length)
            sampled = torch.gather(flat, 2, pick[:, None, :].expand(batch, out_channels, -1))
            targets[name] = Target(pick, sampled.transpose(1, 2).reshape(-1, out_channels).float())
        return record

    model.eval()
    with forward_hooks({conv: hook(name) for name, conv in _convs(model, consumers).items()}):
        model(x)
    return targets


@torch.no_grad()
def refit_sequentially(model: nn.Module, targets: dict[str, Target], x: torch.Tensor,
                       kept_outputs: dict[str, torch.Tensor], *, ridge: float = 1e-3) -> None:
    """Re-fit the weights of the pruned `model`'s conv consumers in place, in one forward pass over the
    calibration images `x` that `targets` were collected on; re-estimate every BatchNorm on `x` too.
    A consumer whose own outputs are pruned too keeps the target columns `kept_outputs[name]`.

    Each consumer's weight becomes the least-squares map from the pruned network's own input rows X' at
    the target positions to the original output Y there: W'^T = (X'^T X' + r I)^-1 X'^T Y, where the
    ridge r is `ridge` times the mean diagonal of X'^T X' (the batch has fewer rows than the Gram
    re-fit's, so it is damped more). BatchNorms normalize with the statistics of `x`, which become their
    running statistics, so later layers are re-fitted on the inputs they will see. `x` is one batch: all
    rows of a layer are needed before it can be re-fitted. The model is left in eval mode.
    """
    def hook(name: str):
        def refit_input(conv: nn.Conv2d, inputs: tuple[torch.Tensor, ...]) -> None:
            rows = _patch_rows(conv, inputs[0], targets[name].positions)
            plain = (rows.T @ rows).double()
            gram = _ridged(plain, ridge)
            output = targets[name].output
            if name in kept_outputs:
                output = output[:, kept_outputs[name]]
            rhs = (rows.T @ output).double()
            factor, info = torch.linalg.cholesky_ex(gram)
            if info.item() != 0:
                return  # numerically indefinite: keep the weights it has
            solved = torch.cholesky_solve(rhs, factor).T
            if not torch.isfinite(solved).all():
                return
            # never worse than no re-fit: the ridge biases the solve, so where the selected weights already
            # reproduce the outputs (only dead channels removed) they are kept
            current = conv.weight.reshape(len(solved), -1).double()
            if _fit_error(solved, plain, rhs) <= _fit_error(current, plain, rhs):
                conv.weight.copy_(solved.reshape(conv.weight.shape))
        return refit_input

    with forward_hooks({conv: hook(name) for name, conv in _convs(model, targets).items()}, pre=True):
        with reestimating_batchnorm(model):
            model(x)


@contextmanager
def reestimating_batchnorm(model: nn.Module) -> Iterator[None]:
    """Inside the block, every BatchNorm of `model` starts from empty statistics and averages those of all
    the batches it sees (momentum None); only the BatchNorms run in training mode (dropout stays off).
    Afterwards the model is in eval mode with the new statistics."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        yield
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum
        model.eval()


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, inputs: torch.Tensor, batch_size: int = 256) -> None:
    """Re-estimate every BatchNorm's running mean and variance on `inputs` (normalized images).

    Pruning shifts the statistics that reach later BatchNorms; a few training batches fix them
    (`reestimating_batchnorm`); the model is left in eval mode.
    """
    if len(inputs) == 0 or not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return
    with reestimating_batchnorm(model):
        for start in range(0, len(inputs), batch_size):
            model(inputs[start : start + batch_size])
