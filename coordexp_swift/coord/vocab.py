"""The coord vocabulary V_c (SPEC §0) and the ONE tokenizer/vocabulary view every consumer shares.

:class:`VocabView` is built once per run from the tokenizer (trainers, eval, tools) and passed down: the coord ids
in bin order, the id → bin table (host numpy + a per-device torch copy built once per device), the per-id decoded
pieces (:class:`PieceTable`), the ``<|im_end|>`` id and ``encode``. Nothing below ``trainers``/``eval`` builds its
own coord lookup or decodes ids one at a time through the tokenizer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from coordexp_swift.coord.codec import NUM_BINS, all_coord_tokens

__all__ = ["IM_END_TOKEN", "PieceTable", "VocabView", "coord_token_ids", "id_to_bin_lookup", "id_to_bin_table"]

IM_END_TOKEN = "<|im_end|>"


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


def id_to_bin_table(coord_ids: torch.Tensor | np.ndarray, size: int) -> np.ndarray:
    """THE id → bin table: ``[max(size, max id + 1)]`` int64 numpy, bin k at ``coord_ids[k]``, -1 elsewhere."""
    ids = np.asarray(torch.as_tensor(coord_ids).cpu(), dtype=np.int64).reshape(-1)
    lut = np.full(max(int(size), int(ids.max()) + 1), -1, dtype=np.int64)
    lut[ids] = np.arange(len(ids), dtype=np.int64)
    return lut


def id_to_bin_lookup(coord_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """:func:`id_to_bin_table` as a long tensor on ``coord_ids.device`` (prefer ``VocabView.id_to_bin_on``)."""
    return torch.from_numpy(id_to_bin_table(coord_ids, vocab_size)).to(coord_ids.device)


class PieceTable:
    """Decoded text of every token id (``text[id]``: the id decoded alone, special tokens kept, no clean-up),
    looked up by array indexing: no per-token Python loop, no tokenizer call."""

    def __init__(self, pieces: Sequence[str]) -> None:
        self.text = np.empty(len(pieces), dtype=object)
        self.text[:] = list(pieces)
        self.lengths = np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces))

    def __len__(self) -> int:
        return len(self.text)

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "PieceTable":
        """Every id of ``tokenizer`` decoded alone (byte pieces of multi-byte characters decode to U+FFFD, which
        keeps JSON structure and desc spans intact)."""
        return cls(tokenizer.batch_decode([[i] for i in range(len(tokenizer))], skip_special_tokens=False,
                                          clean_up_tokenization_spaces=False))

    def pieces(self, ids: Sequence[int] | np.ndarray) -> list[str]:
        """Per-id texts of ``ids`` ``[L]``."""
        return list(self.text[np.asarray(ids, dtype=np.int64)])

    def render(self, ids: Sequence[int] | np.ndarray) -> tuple[str, np.ndarray]:
        """``(text, offsets [L+1])`` of token ids ``[L]``: token i covers ``text[offsets[i]:offsets[i+1]]``.
        Ids outside the table (e.g. a model's padded embedding rows) render as ``""``."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self.text)):
            ok = (ids >= 0) & (ids < len(self.text))
            safe = np.where(ok, ids, 0)
            text = "".join(np.where(ok, self.text[safe], ""))
            lengths = np.where(ok, self.lengths[safe], 0)
        else:
            text, lengths = "".join(self.text[ids]), self.lengths[ids]
        return text, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


@dataclass(frozen=True, eq=False)
class VocabView:
    """One run's view of the tokenizer and vocabulary.

    Fields: ``coord_ids [NUM_BINS]`` long (CPU) — id of bin k; ``id_to_bin [vocab_size]`` int64 numpy — bin of an
    id, -1 for non-coord ids; ``pieces`` — decoded text per id (``vocab_size`` entries; ids the tokenizer does not
    know, e.g. padded embedding rows, decode to ``""``); ``eos_id`` — ``<|im_end|>``; ``encode(text)`` — ids
    without special-token additions; ``vocab_size`` ≥ every id the model or tokenizer can produce; ``decode(ids)``
    (optional) — joint decode of several ids (special tokens kept, no clean-up), used only where per-id pieces lose
    information (U+FFFD halves of multi-byte characters).
    """

    coord_ids: torch.Tensor
    id_to_bin: np.ndarray
    pieces: PieceTable
    eos_id: int
    encode: Callable[[str], list[int]]
    vocab_size: int
    decode: Optional[Callable[[Sequence[int]], str]] = None
    _cache: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_tokenizer(cls, tokenizer, vocab_size: int | None = None) -> "VocabView":
        """Build the view (checks the coord tokens, decodes every id once). ``vocab_size`` defaults to
        ``len(tokenizer)``; pass the model's output size when it is larger (padded embeddings)."""
        coord_ids = coord_token_ids(tokenizer)
        size = max(len(tokenizer), int(vocab_size or 0), int(coord_ids.max()) + 1)
        eos = tokenizer.convert_tokens_to_ids(IM_END_TOKEN)
        if not isinstance(eos, int) or eos < 0 or eos == getattr(tokenizer, "unk_token_id", None):
            raise ValueError(f"tokenizer has no {IM_END_TOKEN} token (Qwen3-VL chat template expected)")
        return cls.from_parts(
            coord_ids=coord_ids, pieces=PieceTable.from_tokenizer(tokenizer), eos_id=eos,
            encode=lambda text: list(tokenizer.encode(text, add_special_tokens=False)), vocab_size=size,
            decode=lambda ids: tokenizer.decode(list(ids), skip_special_tokens=False,
                                                clean_up_tokenization_spaces=False))

    @classmethod
    def from_parts(cls, *, coord_ids: torch.Tensor, pieces: PieceTable | Sequence[str], eos_id: int,
                   encode: Callable[[str], list[int]], vocab_size: int | None = None,
                   decode: Optional[Callable[[Sequence[int]], str]] = None) -> "VocabView":
        """Build the view from its parts (tests, tools that hold no tokenizer object)."""
        coord_ids = torch.as_tensor(coord_ids, dtype=torch.long).reshape(-1).cpu()
        if coord_ids.shape != (NUM_BINS,):
            raise ValueError(f"coord_ids must be [{NUM_BINS}], got {tuple(coord_ids.shape)}")
        table = pieces if isinstance(pieces, PieceTable) else PieceTable(pieces)
        size = max(len(table), int(vocab_size or 0), int(coord_ids.max()) + 1)
        if len(table) < size:
            table = PieceTable(list(table.text) + [""] * (size - len(table)))
        return cls(coord_ids=coord_ids, id_to_bin=id_to_bin_table(coord_ids, size), pieces=table,
                   eos_id=int(eos_id), encode=encode, vocab_size=size, decode=decode)

    def encode_cached(self, text: str) -> tuple[int, ...]:
        """``encode(text)`` memoised on this view (constant texts such as the empty opener)."""
        key = ("encode", text)
        ids = self._cache.get(key)
        if ids is None:
            ids = self._cache[key] = tuple(int(i) for i in self.encode(text))
        return ids

    def id_to_bin_on(self, device: torch.device | str) -> torch.Tensor:
        """``[vocab_size]`` long id → bin table (-1 = not a coord id) on ``device``, built once per device."""
        key = str(torch.device(device))
        table = self._cache.get(key)
        if table is None:
            table = torch.from_numpy(self.id_to_bin).to(device)
            self._cache[key] = table
        return table

    def coord_ids_on(self, device: torch.device | str) -> torch.Tensor:
        """``coord_ids`` on ``device``, moved once per device."""
        key = "coord_ids:" + str(torch.device(device))
        ids = self._cache.get(key)
        if ids is None:
            ids = self.coord_ids.to(device)
            self._cache[key] = ids
        return ids

    def is_coord(self, ids: np.ndarray) -> np.ndarray:
        """Bool mask of coord ids (host numpy)."""
        return self.bins(ids) >= 0

    def bins(self, ids: np.ndarray) -> np.ndarray:
        """Bin of each id (-1 for non-coord ids and ids outside the vocabulary), host numpy."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self.id_to_bin)):
            ok = (ids >= 0) & (ids < len(self.id_to_bin))
            return np.where(ok, self.id_to_bin[np.where(ok, ids, 0)], -1)
        return self.id_to_bin[ids]
