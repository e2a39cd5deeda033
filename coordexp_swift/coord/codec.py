"""norm1000 coordinate codec (SPEC §1.2): bin k in 0..999 <-> normalised coordinate k/999.

Units: a *bin* is an integer k in ``0..MAX_BIN``; a *normalised* coordinate is a float c in [0, 1] with (0, 0) the
top-left corner and bin 999 mapping to exactly 1.0; a *pixel* is an integer x in ``0..size-1``. Every conversion
divides or multiplies by ``MAX_BIN`` (= 999); there is no bin ``NUM_BINS``.

Each numeric function accepts Python scalars (returning ``int`` / ``float``) or tensors (vectorised, returning a
tensor of the same shape; bins are ``torch.long``, normalised values ``torch.float32``). Rounding is half-up
(``floor(v + 0.5)``) everywhere, also for pixels and grids. Tensor math runs in float64 so that the tensor and
scalar paths agree exactly.
"""
from __future__ import annotations

import math
import re

import torch

NUM_BINS: int = 1000
MAX_BIN: int = NUM_BINS - 1
#: ASCII digits only (``\d`` would also match e.g. Arabic-Indic digits, which no tokenizer maps to a coord token).
COORD_TOKEN_RE: re.Pattern[str] = re.compile(r"<\|coord_([0-9]{1,4})\|>")

_RANGE_HINT = f"norm1000 range 0..{MAX_BIN}"
_ALL_TOKENS: tuple[str, ...] = tuple(f"<|coord_{k}|>" for k in range(NUM_BINS))
_TOKEN_SET: frozenset[str] = frozenset(_ALL_TOKENS)

Number = int | float


def _check_finite(c: float, what: str) -> None:
    if math.isnan(c):
        raise ValueError(f"cannot convert NaN {what} to a norm1000 bin; fix the value upstream")


def encode(c: Number | torch.Tensor) -> int | torch.Tensor:
    """Normalised coordinate(s) -> bin(s): ``k = clamp(floor(999·clamp(c,0,1) + 0.5), 0, 999)``.

    Scalars: NaN raises ValueError. Tensors (any real dtype): NaN maps to bin 0 (no host sync); returns long.
    """
    if isinstance(c, torch.Tensor):
        v = torch.nan_to_num(c.to(torch.float64), nan=0.0).clamp(0.0, 1.0)
        return torch.floor(v * MAX_BIN + 0.5).clamp(0, MAX_BIN).to(torch.long)
    c = float(c)
    _check_finite(c, "coordinate")
    c = min(max(c, 0.0), 1.0)
    return min(max(math.floor(c * MAX_BIN + 0.5), 0), MAX_BIN)


def decode(k: int | torch.Tensor) -> float | torch.Tensor:
    """Bin(s) -> normalised coordinate(s) ``k/999``.

    Scalars must be integral and in 0..999 (ValueError naming the norm1000 range otherwise). Tensors are not
    range-checked (no host sync); returns float32.
    """
    if isinstance(k, torch.Tensor):
        return (k.to(torch.float64) / MAX_BIN).to(torch.float32)
    kk = _as_bin(k)
    return kk / MAX_BIN


def _as_bin(k: object) -> int:
    if isinstance(k, bool):
        raise ValueError(f"coord bin must be an integer in {_RANGE_HINT}, got bool {k!r}")
    index = getattr(type(k), "__index__", None)  # int, numpy/torch integer scalars; not float or str
    if index is None:
        raise ValueError(f"coord bin must be an integer in {_RANGE_HINT}, got {type(k).__name__} {k!r}")
    kk = int(index(k))
    if not 0 <= kk <= MAX_BIN:
        raise ValueError(f"coord bin {kk} outside the {_RANGE_HINT}")
    return kk


def coord_token(k: int) -> str:
    """Canonical literal ``<|coord_k|>`` for bin k (ValueError outside 0..999 or for non-integers)."""
    return _ALL_TOKENS[_as_bin(k)]


def all_coord_tokens() -> list[str]:
    """The 1000 literals ``<|coord_0|>``..``<|coord_999|>`` in bin order (index = bin)."""
    return list(_ALL_TOKENS)


def is_canonical_coord_token(s: object) -> bool:
    """Whether ``s`` is exactly one of the 1000 tokenizer literals ``<|coord_k|>`` (canonical decimal, no leading
    zeros): ``<|coord_01|>`` parses as bin 1 but is not a token the tokenizer produces."""
    return isinstance(s, str) and s in _TOKEN_SET


def parse_coord_token(s: str) -> int:
    """Bin of a whole coord literal. Accepts ``<|coord_([0-9]{1,4})|>`` (ASCII digits; ``<|coord_007|>`` -> 7),
    then range-checks.

    Raises ValueError mentioning "norm1000 range 0..999" for anything else (wrong shape, 5+ digits, >= 1000).
    """
    if not isinstance(s, str):
        raise ValueError(f"coord token must be a string like '<|coord_k|>' with k in {_RANGE_HINT}, got {s!r}")
    m = COORD_TOKEN_RE.fullmatch(s)
    if m is None:
        raise ValueError(f"malformed coord token {s!r}: expected '<|coord_k|>' with k in {_RANGE_HINT}")
    k = int(m.group(1))
    if k > MAX_BIN:
        raise ValueError(f"coord token {s!r} outside the {_RANGE_HINT}")
    return k


def _check_size(size: int | torch.Tensor, what: str) -> None:
    if isinstance(size, torch.Tensor):
        return
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"{what} must be an integer >= 1, got {size!r}")


def _scale_round(k: Number | torch.Tensor, size: int | torch.Tensor, what: str) -> int | torch.Tensor:
    """``clamp(floor(k·(size−1)/999 + 0.5), 0, size−1)``; k·(size−1) is formed before dividing (exact for ints)."""
    _check_size(size, what)
    if isinstance(k, torch.Tensor) or isinstance(size, torch.Tensor):
        kt = torch.as_tensor(k).to(torch.float64)
        st = torch.as_tensor(size, device=kt.device).to(torch.float64)
        x = torch.floor(kt * (st - 1.0) / MAX_BIN + 0.5)
        return torch.minimum(x.clamp(min=0.0), st - 1.0).to(torch.long)
    kk = float(k)
    _check_finite(kk, "bin")
    x = math.floor(kk * (size - 1) / MAX_BIN + 0.5)
    return min(max(x, 0), size - 1)


def bin_to_pixel(k: int | torch.Tensor, size: int | torch.Tensor) -> int | torch.Tensor:
    """Bin(s) -> pixel(s): ``x = round(k/999·(size−1))`` half-up, clamped to ``[0, size−1]`` (size = W or H).

    ``size`` may be a tensor broadcastable against ``k`` (per-image sizes). Offline prep / eval only.
    """
    return _scale_round(k, size, "image size")


def pixel_to_bin(x: Number | torch.Tensor, size: int | torch.Tensor) -> int | torch.Tensor:
    """Pixel(s) -> bin(s): ``c = x/(size−1)`` then :func:`encode` (size 1: the only pixel 0 maps to bin 0)."""
    _check_size(size, "image size")
    if isinstance(x, torch.Tensor) or isinstance(size, torch.Tensor):
        xt = torch.as_tensor(x).to(torch.float64)
        st = torch.as_tensor(size, device=xt.device).to(torch.float64)
        c = torch.where(st > 1.0, xt / (st - 1.0).clamp(min=1.0), torch.zeros_like(xt))
        return encode(c)
    xx = float(x)
    _check_finite(xx, "pixel")
    return encode(xx / (size - 1)) if size > 1 else 0


def project_to_grid(k: int | torch.Tensor, resolution: int | torch.Tensor) -> int | torch.Tensor:
    """Bin(s) -> cell(s) of an R-grid: ``round(k/999·(R−1))`` half-up, in ``[0, R−1]`` (SPEC 001 1.8.3)."""
    return _scale_round(k, resolution, "grid resolution")


__all__ = [
    "NUM_BINS", "MAX_BIN", "COORD_TOKEN_RE", "encode", "decode", "coord_token", "all_coord_tokens",
    "parse_coord_token", "is_canonical_coord_token", "bin_to_pixel", "pixel_to_bin", "project_to_grid",
]
