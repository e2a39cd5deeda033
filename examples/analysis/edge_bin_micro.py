"""Edge-bin micro-experiment of docs/demo.md (issue 11, SPEC §2.3): where greedy outputs at <|coord_0|>/<|coord_999|>
of a model that does not localise yet come from.

A coord head — 1000 rows initialised like the tiny model's (``init_coord_rows``: smooth in the bin index) — reads a
per-slot hidden state (x1, y1, x2, y2) plus, with ``info`` 1, a learnt map of noisy Fourier features of the target
(a weakly informative model); it is trained with Adam (lr 2e-3, 1500 steps, 64 boxes per step) on softCE + W1
(the project's own terms) against the GT bins of a shapes train split. Reported per variant: how often the argmax
is exactly the edge bin (x1/y1 at 0, x2 at 999), within the first lattice step (x1 ≤ 8, x2 ≥ 991), and the argmax
vs expectation bin errors. Variants: σ 2 / 4 / 8, σ 2 without the edge renormalisation, σ 2 on data whose edge atoms
were moved inwards.

  coordexp-swift demo --out /tmp/d --curriculum multi --no-stage2 --max-steps 1   # or any shapes split
  python examples/analysis/edge_bin_micro.py /tmp/d/shapes/train.jsonl            # ~6 min on one CPU core
"""
from __future__ import annotations

import json
import math
import re
import sys

import torch

from coordexp_swift.losses.coord_dist import gaussian_soft_labels, soft_ce, w1_cdf
from coordexp_swift.tools.coord_init import init_coord_rows

FREQS = torch.arange(1, 9).float()


def gt_bins(path: str) -> torch.Tensor:
    """[M, 4] GT bins of every object of a shapes JSONL."""
    out = []
    for line in open(path, encoding="utf-8"):
        for o in json.loads(line)["objects"]:
            out.append([int(re.search(r"\d+", b).group()) for b in o["bbox_2d"]])
    return torch.tensor(out)


def _features(t: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    noisy = t.float() / 999 + torch.randn(t.shape, generator=g) * 0.3
    return torch.cat([torch.cos(math.pi * noisy[:, None] * FREQS), torch.sin(math.pi * noisy[:, None] * FREQS)], 1)


def run(data: torch.Tensor, *, sigma: float = 2.0, renorm: bool = True, info: float = 0.0, steps: int = 1500,
        hidden: int = 128, seed: int = 0) -> dict[str, float]:
    g = torch.Generator().manual_seed(seed)
    vocab = torch.randn(1525, hidden, generator=g) * 0.02
    ids = torch.arange(500, 1500)
    init_coord_rows(vocab, ids, generator=g)
    w = vocab[ids].clone().requires_grad_(True)
    slot = torch.randn(4, hidden, generator=g).requires_grad_(True)
    a = torch.zeros(hidden, 16).requires_grad_(True)
    opt = torch.optim.Adam([w, slot, a], lr=2e-3)
    k = torch.arange(1000, dtype=torch.float32)
    for _ in range(steps):
        t = data[torch.randint(0, data.shape[0], (64,), generator=g)].reshape(-1)
        z = (slot[torch.arange(4).repeat(64)] + info * _features(t, g) @ a.T) @ w.T
        q = gaussian_soft_labels(t, sigma) if renorm else \
            torch.exp(-(k[None] - t[:, None].float()) ** 2 / (2 * sigma ** 2)) / (sigma * math.sqrt(2 * math.pi))
        loss = soft_ce(z, q).mean() + w1_cdf(torch.softmax(z, -1), q).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        t = data[: min(2000, data.shape[0])]
        n = t.shape[0]
        z = (slot[torch.arange(4).repeat(n)] + info * _features(t.reshape(-1), g) @ a.T) @ w.T
        am = z.argmax(-1).reshape(n, 4)
        e = (torch.softmax(z, -1) * k).sum(-1).reshape(n, 4)
    return {"x1_at_0": (am[:, 0] == 0).float().mean().item(), "y1_at_0": (am[:, 1] == 0).float().mean().item(),
            "x2_at_999": (am[:, 2] == 999).float().mean().item(), "x1_le_8": (am[:, 0] <= 8).float().mean().item(),
            "x2_ge_991": (am[:, 2] >= 991).float().mean().item(),
            "argmax_err": (am - t).abs().float().mean().item(), "expect_err": (e - t).abs().mean().item()}


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    data = gt_bins(argv[0])
    inward = data.clone()
    inward[:, :2] = inward[:, :2].clamp(min=8)
    inward[:, 2:] = inward[:, 2:].clamp(max=991)
    steps = int(argv[1]) if len(argv) > 1 else 1500
    variants = [("sigma 2", data, {}), ("sigma 2, no edge renormalisation", data, {"renorm": False}),
                ("sigma 2, edge atoms moved inwards", inward, {}), ("sigma 4", data, {"sigma": 4.0}),
                ("sigma 8", data, {"sigma": 8.0})]
    for name, d, kw in variants:
        for info in (0.0, 1.0):
            res = run(d, info=info, steps=steps, **kw)
            print(f"{name:36s} info {info:.0f}: " + ", ".join(f"{k} {v:.3f}" for k, v in res.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
