"""Full-vocabulary token cross-entropy on gathered logits rows, without fp32 ``[N, V]`` temporaries (SPEC §4.4).

``rows [N, V]`` are the logits that predict ``targets [N]`` (the caller applied the causal shift: the row read at
position t − 1 predicts the token at t). ``CE_i = LSE(sanitize(rows_i)) − sanitize(rows_i)[targets_i]`` in fp32
whatever the input dtype; sanitisation as in ``coord_dist.sanitize_logits`` (NaN -> 0, ±inf -> ±1e4, clamp to
±1e4; replaced entries get zero gradient). Values equal ``F.cross_entropy(sanitize_logits(rows), targets)`` up to
float32 rounding.

Memory: forward and backward walk the rows in blocks through one fp32 work block (about 16 MB on CPU, 128 MB on
an accelerator, where fewer, larger blocks keep the kernel-launch count low); forward keeps
only the per-row LSE ``[N]``, backward writes straight into the one ``[N, V]`` gradient it returns (input dtype).
No host synchronisation.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from coordexp_swift.losses.blocks import rows_per_block

__all__ = ["token_ce_rows"]

LOGIT_BOUND = 1e4  # == coord_dist.LOGIT_BOUND


def _rows_per_block(rows: torch.Tensor) -> int:
    return rows_per_block(rows.shape[1], rows.device)


def _clamp_into(dst: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """``dst <- clamp(src, ±1e4)`` in fp32 (NaN stays NaN), one pass when the dtypes agree."""
    if src.dtype == dst.dtype:
        return torch.clamp(src, -LOGIT_BOUND, LOGIT_BOUND, out=dst)
    return dst.copy_(src).clamp_(-LOGIT_BOUND, LOGIT_BOUND)


def _sanitize_into(dst: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    return _clamp_into(dst, src).nan_to_num_(nan=0.0)


class _BlockedCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        n, v = rows.shape
        per = _rows_per_block(rows)
        work = torch.empty((min(per, n), v), dtype=torch.float32, device=rows.device)
        lse = torch.empty(n, dtype=torch.float32, device=rows.device)
        picked = torch.empty(n, dtype=torch.float32, device=rows.device)
        for r0 in range(0, n, per):
            r1 = min(n, r0 + per)
            blk = _sanitize_into(work[: r1 - r0], rows[r0:r1])
            picked[r0:r1] = blk.gather(1, targets[r0:r1, None])[:, 0]
            m = blk.amax(-1)
            lse[r0:r1] = blk.sub_(m[:, None]).exp_().sum(-1).log_().add_(m)
        ctx.save_for_backward(rows, targets, lse)
        ctx.per = per
        return lse - picked

    @staticmethod
    @once_differentiable
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        rows, targets, lse = ctx.saved_tensors
        n, v = rows.shape
        per = ctx.per
        grad = torch.empty_like(rows)
        work = None if rows.dtype == torch.float32 else torch.empty(
            (min(per, n), v), dtype=torch.float32, device=rows.device)
        drop_work = torch.empty((min(per, n), v), dtype=torch.bool, device=rows.device)
        g = g.float()
        for r0 in range(0, n, per):
            r1 = min(n, r0 + per)
            blk = grad[r0:r1] if work is None else work[: r1 - r0]
            _clamp_into(blk, rows[r0:r1])
            drop = torch.ne(blk, rows[r0:r1], out=drop_work[: r1 - r0])  # entries sanitisation replaces
            blk.sub_(lse[r0:r1, None]).exp_()  # softmax (NaN where the input was NaN: masked below)
            blk.scatter_add_(1, targets[r0:r1, None], torch.full((r1 - r0, 1), -1.0, device=blk.device))
            blk.mul_(g[r0:r1, None]).masked_fill_(drop, 0.0)  # zero gradient where sanitised
            if work is not None:
                grad[r0:r1].copy_(blk)
        return grad, None


def token_ce_rows(rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-row CE ``[N]`` float32 of logits ``rows [N, V]`` (any float dtype) against ``targets [N]`` long ids
    (see the module docstring). ``N = 0`` gives ``[0]`` connected to ``rows``' graph."""
    if rows.dim() != 2 or targets.shape != rows.shape[:1]:
        raise ValueError(f"token_ce_rows: rows must be [N, V] and targets [N], got {tuple(rows.shape)} and "
                         f"{tuple(targets.shape)}")
    if rows.shape[0] == 0:
        return rows.sum(-1).float()
    return _BlockedCE.apply(rows, targets.long())
