"""The coord vocabulary V_c: token ids of ``<|coord_0|>``..``<|coord_999|>`` in bin order (SPEC §0)."""
from __future__ import annotations

import torch

from coordexp_swift.coord.codec import NUM_BINS, all_coord_tokens


def coord_token_ids(tokenizer) -> torch.Tensor:
    """Return ``coord_ids`` [1000] long with ``coord_ids[k]`` = the id of ``<|coord_k|>``.

    Fails (ValueError) unless every literal encodes to exactly one in-vocab id and the 1000 ids are distinct;
    the message names the first offending token and how to fix the checkpoint (``coordexp-swift expand-vocab``).
    """
    ids: list[int] = []
    unk = getattr(tokenizer, "unk_token_id", None)
    for tok in all_coord_tokens():
        enc = tokenizer.encode(tok, add_special_tokens=False)
        if len(enc) != 1 or enc[0] == unk:
            raise ValueError(
                f"tokenizer maps {tok!r} to {len(enc)} ids {enc[:8]} (expected exactly 1 in-vocab id); add the coord "
                "tokens with `coordexp-swift expand-vocab --src CKPT --dst CKPT`")
        ids.append(enc[0])
    if len(set(ids)) != NUM_BINS:
        raise ValueError("coord tokens do not map to 1000 distinct ids")
    return torch.tensor(ids, dtype=torch.long)


def id_to_bin_lookup(coord_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[vocab_size] long: bin k at ``coord_ids[k]``, -1 elsewhere (vectorised membership + bin lookup)."""
    lut = torch.full((vocab_size,), -1, dtype=torch.long, device=coord_ids.device)
    lut[coord_ids] = torch.arange(NUM_BINS, device=coord_ids.device)
    return lut
