"""Row-block size of the full-vocabulary passes (``token_ce``, ``coord_dist._LogPCoord``): one reused fp32 work
block of about 16 MB on CPU and 128 MB on an accelerator, where fewer, larger blocks keep the kernel-launch count
low (at V = 152,669 the CPU size is 27 rows per block: ~150 blocks × ~8 kernels for 4096 rows on a GPU)."""
from __future__ import annotations

import torch

__all__ = ["rows_per_block"]

_BLOCK_ELEMS = 1 << 22
_BLOCK_ELEMS_ACCEL = 1 << 25


def rows_per_block(n_cols: int, device: torch.device) -> int:
    """Rows of a ``[rows, n_cols]`` fp32 work block on ``device`` (≥ 1)."""
    elems = _BLOCK_ELEMS if torch.device(device).type == "cpu" else _BLOCK_ELEMS_ACCEL
    return max(1, elems // max(int(n_cols), 1))
