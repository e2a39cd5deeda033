"""norm1000 codec (SPEC §1.2): bins k <-> k/999, token literals, pixels and R-grids.

Golden values are worked out by hand from the SPEC formulas (shown inline); the tensor path is checked against the
scalar path element by element.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from coordexp_swift.coord import codec
from coordexp_swift.coord.codec import (
    COORD_TOKEN_RE, MAX_BIN, NUM_BINS, all_coord_tokens, bin_to_pixel, coord_token, decode, encode,
    parse_coord_token, pixel_to_bin, project_to_grid,
)


def test_constants():
    """seed 001 1.8.1: the codec scale is 999; there are 1000 bins and no bin 1000."""
    assert NUM_BINS == 1000 and MAX_BIN == 999
    assert COORD_TOKEN_RE.pattern == r"<\|coord_([0-9]{1,4})\|>"  # ASCII digits only (issue 13 item 11)


def test_encode_anchor_values():
    """seed 001 1.7.1: enc(1)=999, enc(0)=0, enc(.5)=500 (999·0.5 + 0.5 = 500.0 -> floor 500)."""
    assert encode(1.0) == 999 and encode(1) == 999
    assert encode(0.0) == 0 and encode(0) == 0
    assert encode(0.5) == 500
    # half-up at an exact tie: c = 0.5/999 -> 999c + 0.5 = 1.0 -> bin 1 (banker's rounding of 0.5 would give 0)
    assert encode(0.5 / 999) == 1
    # just below a tie stays down: c = 0.4/999 -> 0.9 -> 0
    assert encode(0.4 / 999) == 0


def test_encode_clamps_out_of_range():
    """SPEC §1.2: c is clamped to [0,1] before encoding; inf behaves like the clamp, NaN is rejected."""
    assert encode(-0.3) == 0 and encode(1.7) == 999
    assert encode(math.inf) == 999 and encode(-math.inf) == 0
    with pytest.raises(ValueError, match="NaN"):
        encode(math.nan)


def test_decode_is_k_over_999():
    """seed 001 1.7.1 / 1.7.6: dec(k) = k/999; dec(999) = 1.0 exactly, dec(0) = 0.0."""
    assert decode(999) == 1.0 and decode(0) == 0.0
    for k in (1, 123, 500, 998):
        assert decode(k) == k / 999
    assert decode(np.int64(7)) == 7 / 999
    for bad in (-1, 1000, 2.0, True, "5"):
        with pytest.raises(ValueError, match="norm1000 range 0..999"):
            decode(bad)


def test_round_trip_all_bins_scalar_and_tensor():
    """seed 001 1.7.1: enc(dec(k)) = k for every bin; |dec(enc(c)) − c| <= 0.5/999 on a dense grid."""
    assert [encode(decode(k)) for k in range(NUM_BINS)] == list(range(NUM_BINS))
    ks = torch.arange(NUM_BINS)
    assert torch.equal(encode(decode(ks)), ks)
    c = torch.linspace(0.0, 1.0, 20011, dtype=torch.float64)
    err = (decode(encode(c)).double() - c).abs().max().item()
    assert err <= 0.5 / 999 + 1e-7  # + float32 storage of k/999


def test_tensor_path_matches_scalar_path():
    """SPEC §1.2: the vectorised encode/decode equal the scalar ones element by element."""
    c = torch.tensor([-1.0, 0.0, 0.25, 0.5, 0.5 / 999, 1.5 / 999, 0.999, 1.0, 3.0, float("inf"), float("-inf")])
    assert encode(c).tolist() == [encode(float(v)) for v in c]
    assert encode(c).dtype == torch.long
    assert encode(torch.tensor([float("nan")])).tolist() == [0]  # documented tensor NaN policy
    d = decode(torch.tensor([0, 1, 500, 999]))
    # float32 result = the float32 rounding of the exact k/999
    assert d.dtype == torch.float32
    assert torch.equal(d, torch.tensor([0.0, 1 / 999, 500 / 999, 1.0], dtype=torch.float64).float())
    assert encode(torch.tensor([[0.0, 1.0]], dtype=torch.bfloat16)).tolist() == [[0, 999]]


def test_coord_token_literals():
    """SPEC §1.2: literal <|coord_k|> in canonical decimal; 1000 of them in bin order."""
    assert coord_token(0) == "<|coord_0|>" and coord_token(999) == "<|coord_999|>"
    toks = all_coord_tokens()
    assert len(toks) == 1000 and len(set(toks)) == 1000
    assert toks[42] == "<|coord_42|>" and toks[-1] == "<|coord_999|>"
    toks.append("x")  # a fresh list each call: callers cannot corrupt the table
    assert len(all_coord_tokens()) == 1000
    for bad in (-1, 1000, 1.0, None, True):
        with pytest.raises(ValueError, match="norm1000 range 0..999"):
            coord_token(bad)


def test_parse_coord_token():
    """SPEC §1.2 / 001 1.7.3: parsers accept 1-4 digits then range-check; bin 1000 and -1 raise."""
    assert parse_coord_token("<|coord_0|>") == 0
    assert parse_coord_token("<|coord_999|>") == 999
    assert parse_coord_token("<|coord_007|>") == 7  # non-canonical but within the 1-4 digit grammar
    assert [parse_coord_token(t) for t in all_coord_tokens()] == list(range(1000))
    for bad in ("<|coord_1000|>", "<|coord_9999|>", "<|coord_-1|>", "<|coord_12345|>", "<|coord_|>",
                "<|coord_5|> ", " <|coord_5|>", "<coord_5>", "coord_5", "", "<|coord_1.5|>"):
        with pytest.raises(ValueError, match="norm1000 range 0..999"):
            parse_coord_token(bad)
    with pytest.raises(ValueError, match="norm1000 range 0..999"):
        parse_coord_token(5)  # type: ignore[arg-type]


def test_bin_to_pixel_and_back():
    """SPEC §1.2: x = round(k/999·(W−1)) clamped; c = x/(W−1). Hand values for W = 640 (W−1 = 639)."""
    assert bin_to_pixel(0, 640) == 0 and bin_to_pixel(999, 640) == 639
    assert bin_to_pixel(500, 640) == 320  # 500·639/999 = 319.82 -> 320
    assert bin_to_pixel(1, 640) == 1  # 0.6396 -> 1
    assert pixel_to_bin(639, 640) == 999 and pixel_to_bin(0, 640) == 0
    assert pixel_to_bin(320, 640) == 500  # 320/639·999 = 500.28 -> 500
    # W = 1000: W−1 = 999, so pixels and bins coincide
    assert [bin_to_pixel(k, 1000) for k in range(1000)] == list(range(1000))
    assert [pixel_to_bin(x, 1000) for x in range(1000)] == list(range(1000))
    # clamping: out-of-image pixels map to the edge bins
    assert pixel_to_bin(-5, 640) == 0 and pixel_to_bin(700, 640) == 999
    assert bin_to_pixel(0, 1) == 0 and bin_to_pixel(999, 1) == 0 and pixel_to_bin(0, 1) == 0
    with pytest.raises(ValueError, match="image size"):
        bin_to_pixel(3, 0)


def test_pixel_tensor_paths_and_per_image_sizes():
    """SPEC §1.2 (vectorised): tensor bins with per-element sizes equal the scalar function."""
    k = torch.tensor([0, 1, 250, 500, 998, 999])
    sizes = torch.tensor([640, 480, 17, 2, 1000, 1])
    got = bin_to_pixel(k, sizes)
    assert got.tolist() == [bin_to_pixel(int(a), int(s)) for a, s in zip(k, sizes)]
    x = torch.tensor([0.0, 12.4, 300.0, 639.0])
    assert pixel_to_bin(x, 640).tolist() == [pixel_to_bin(float(v), 640) for v in x]
    assert pixel_to_bin(torch.tensor([0.0, 5.0]), torch.tensor([1, 11])).tolist() == [0, 500]  # 5/10·999 = 499.5


def test_project_to_grid_r256_and_w_minus_1():
    """seed 001 1.8.3: projection k/999·(R−1), tested at R = 256 and at R = W (scale W−1)."""
    # R = 256: 999 -> 255, 0 -> 0, 500 -> 500·255/999 = 127.63 -> 128, 2 -> 0.51 -> 1 (half-up of >0.5)
    assert project_to_grid(999, 256) == 255 and project_to_grid(0, 256) == 0
    assert project_to_grid(500, 256) == 128 and project_to_grid(2, 256) == 1 and project_to_grid(1, 256) == 0
    ks = torch.arange(1000)
    cells = project_to_grid(ks, 256)
    # brute force with exact rational arithmetic: floor(k·255/999 + 1/2) = (2·k·255 + 999) // (2·999)
    assert cells.tolist() == [(2 * k * 255 + 999) // (2 * 999) for k in range(1000)]
    assert int(cells.min()) == 0 and int(cells.max()) == 255
    assert torch.all(cells[1:] >= cells[:-1])  # monotone
    # R = W: the grid projection is the pixel projection (scale W−1)
    for w in (640, 481):
        assert project_to_grid(ks, w).tolist() == bin_to_pixel(ks, w).tolist()
        assert project_to_grid(ks, w).tolist() == [(2 * k * (w - 1) + 999) // (2 * 999) for k in range(1000)]


def test_codec_module_imports_only_re_math_torch():
    """SPEC §1.2 layering: coord/codec.py imports only re, math and torch."""
    from tests.layering import top_level_imports

    mods = top_level_imports(codec)
    assert mods <= {"re", "math", "torch"}, mods
