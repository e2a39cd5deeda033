"""A small byte-level fake tokenizer for rollout-parser tests.

Vocabulary: the 256 single bytes (ids 0..255), multi-byte merges (:data:`MERGES`, chosen so that tokens straddle
record boundaries: ``"]}, {"``; raw ``bytes`` merges may split UTF-8 characters, ``"]}]}"``, ``" [{"``...), ``<|im_end|>`` / ``<|endoftext|>`` and the 1000 coord
literals as atomic tokens. ``encode`` splits out special/coord literals first, then greedily takes the longest
merge over the UTF-8 bytes; ``decode_token`` decodes one id's bytes with ``errors="replace"`` exactly like a
byte-level BPE, so a lone byte of a multi-byte character decodes to U+FFFD.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

MERGES: tuple[str, ...] = (
    '{"', '{"objects": [', '{"objects', 'objects', '": [', '": ', '": "', '", "', '", ', ', "', ' [{"', ' [',
    'desc', 'bbox_2d', '"bbox_2d', 'poly', ']}', ']}]}', ']}, {"', '}, {"', '"}', '"}]}', '"}, {"', '], "', ', ',
    '"desc', 'red', ' circle', 'blue', ' square', 'green', 'é', ']}]', '}]}',
)
SPECIALS: tuple[str, ...] = ("<|endoftext|>", "<|im_end|>")


class FakeByteTokenizer:
    """Greedy longest-match byte-level tokenizer; see module doc. ``view`` is its VocabView."""

    def __init__(self, merges: Sequence[str | bytes] = MERGES) -> None:
        self.vocab: list[bytes | str] = [bytes([b]) for b in range(256)]
        self.vocab += [m if isinstance(m, bytes) else m.encode("utf-8") for m in merges]
        self._by_bytes = {v: i for i, v in enumerate(self.vocab) if isinstance(v, bytes)}
        self._max_len = max(len(v) for v in self._by_bytes)
        self.special_ids = {}
        for s in SPECIALS:
            self.special_ids[s] = len(self.vocab)
            self.vocab.append(s)
        self.coord_base = len(self.vocab)
        self.vocab += [f"<|coord_{k}|>" for k in range(1000)]
        self.coord_id_to_bin = {self.coord_base + k: k for k in range(1000)}
        self.im_end_id = self.special_ids["<|im_end|>"]
        self._literal_ids = {v: i for i, v in enumerate(self.vocab) if isinstance(v, str)}
        self._split = re.compile("(" + "|".join(re.escape(s) for s in self._literal_ids) + ")")
        self._view = None

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def coord_id(self, k: int) -> int:
        return self.coord_base + k

    def decode_token(self, i: int) -> str:
        v = self.vocab[i]
        return v if isinstance(v, str) else v.decode("utf-8", errors="replace")

    def decode_ids(self, ids: Sequence[int]) -> str:
        """Joint decode (bytes concatenated before UTF-8 decoding), like ``tokenizer.decode(ids)``."""
        out: list[str] = []
        buf = b""
        for i in ids:
            v = self.vocab[i]
            if isinstance(v, str):
                out.append(buf.decode("utf-8", errors="replace") + v)
                buf = b""
            else:
                buf += v
        out.append(buf.decode("utf-8", errors="replace"))
        return "".join(out)

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for part in self._split.split(text):
            if not part:
                continue
            if part in self._literal_ids:
                ids.append(self._literal_ids[part])
                continue
            data = part.encode("utf-8")
            pos = 0
            while pos < len(data):
                for n in range(min(self._max_len, len(data) - pos), 0, -1):
                    tid = self._by_bytes.get(data[pos:pos + n])
                    if tid is not None:
                        ids.append(tid)
                        pos += n
                        break
        return ids

    @property
    def view(self):
        """The :class:`~coordexp_swift.coord.vocab.VocabView` of this vocabulary (what the parser takes)."""
        if self._view is None:
            import torch

            from coordexp_swift.coord.vocab import VocabView

            self._view = VocabView.from_parts(
                coord_ids=torch.arange(self.coord_base, self.coord_base + 1000),
                pieces=[self.decode_token(i) for i in range(self.vocab_size)], eos_id=self.im_end_id,
                encode=self.encode, decode=self.decode_ids)
        return self._view


def check_prefix_contract(ids: Sequence[int], parsed, decode_token) -> None:
    """Assert SPEC B1's prefix contract for a valid parse of ``ids`` (no ``<|im_end|>`` among them): the kept ids
    are the model's ids up to some j; only token j may be replaced, by ids whose text is a strict prefix of its text;
    the per-token text of the prefix ids is ``prefix_text``, which ends (ignoring whitespace) in ``[`` or ``}``."""
    prefix = list(parsed.prefix_token_ids)
    j = 0
    while j < min(len(prefix), len(ids)) and prefix[j] == ids[j]:
        j += 1
    rest = "".join(decode_token(i) for i in prefix[j:])
    if rest:
        piece = decode_token(ids[j])
        assert piece.startswith(rest) and piece != rest, (piece, rest)
    assert "".join(decode_token(i) for i in prefix) == parsed.prefix_text
    assert parsed.prefix_text.rstrip(" \t\n\r").endswith(("[", "}")), parsed.prefix_text


_REAL_VIEWS: dict = {}


def real_view(vocab: str = "qwen"):
    """``(tokenizer, VocabView)`` of the tiny model's real tokenizer (``"qwen"``: the Qwen byte-level BPE with the
    coord tokens at their real ids; ``"compact"``: the demo BPE), built once per process."""
    if vocab not in _REAL_VIEWS:
        from coordexp_swift.coord.vocab import VocabView
        from coordexp_swift.tools.tiny_model import build_tokenizer

        tok = build_tokenizer(vocab=vocab)
        _REAL_VIEWS[vocab] = (tok, VocabView.from_tokenizer(tok))
    return _REAL_VIEWS[vocab]
