"""Least-squares reconstruction of the layer that consumes a pruned channel group.

On calibration images, the ORIGINAL network's input X to each consumer is sampled (a k x k conv's
input is unfolded, so each row is one output position's receptive field: C * k * k features) and its
Gram matrix G = X^T X is accumulated. Because the consumer's original output is Y = X W^T, the refit of
the weights W' restricted to the kept input columns S,
    min ||X[:, S] W'^T - X W^T||,
is the solution of G[S, S] W'^T = G[S, :] W^T. Only G is stored: no features, no outputs.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F


def _rows(module: nn.Module, x: torch.Tensor, positions: int, generator: torch.Generator) -> torch.Tensor:
    """Sampled input rows of a consumer: [B * positions, C*k*k] for a conv, [B, in] for a Linear."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    cols = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)  # [B, D, L]
    batch, dim, length = cols.shape
    if positions < length:
        pick = torch.randint(length, (batch, positions), generator=generator)
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

    handles = [modules[name].register_forward_hook(hook(name)) for name in consumers]
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                model(batch)
    finally:
        for h in handles:
            h.remove()
    return grams


def _ridged(gram: torch.Tensor) -> torch.Tensor:
    """`gram` + a small ridge (1e-6 of its mean diagonal) on the diagonal, so a rank-deficient G solves."""
    ridge = 1e-6 * gram.diagonal().mean().clamp_min(1e-12)
    return gram + ridge * torch.eye(len(gram), dtype=gram.dtype)


def refit(weight: torch.Tensor, gram: torch.Tensor, keep_cols: torch.Tensor) -> torch.Tensor:
    """Least-squares weights over the kept input columns, shape [O, len(keep_cols)] (flattened).

    `weight` is the original weight flattened to [O, D]; `gram` is [D, D]; `keep_cols` indexes D.
    A small ridge keeps a rank-deficient G solvable; if the solve still fails, the original weights of
    the kept columns are returned (plain channel selection), never NaN.
    """
    w = weight.double()
    g_ss = _ridged(gram[keep_cols][:, keep_cols])
    rhs = gram[keep_cols] @ w.T  # [S, O]
    # G + ridge*I is symmetric positive definite: Cholesky solves it about twice as fast as LU
    factor, info = torch.linalg.cholesky_ex(g_ss)
    if info.item() == 0:
        solved = torch.cholesky_solve(rhs, factor)
    else:  # numerically indefinite even with the ridge
        solved = torch.linalg.lstsq(g_ss, rhs).solution
    if not torch.isfinite(solved).all():
        return weight[:, keep_cols].clone()
    return solved.T.to(weight.dtype)


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
