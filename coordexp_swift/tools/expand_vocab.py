"""``coordexp-swift expand-vocab --src CKPT --dst CKPT``: add the 1000 coord tokens to a Qwen3-VL checkpoint.

The tokens ``<|coord_0|>``..``<|coord_999|>`` are added as *non-special* tokens (decoding with
``skip_special_tokens=True`` keeps them), in bin order, so their ids are contiguous after the tokenizer's current
vocabulary. The input embedding and the LM head are resized to cover them (never shrunk: Qwen checkpoints pad
their embedding matrix beyond the tokenizer, and those padding rows are reused when they fall in range).

Initialisation of the 1000 new rows (input embeddings, and the LM head when untied): the smooth low-frequency code
of :mod:`coordexp_swift.tools.coord_init` around the mean of the existing rows, at their per-dimension scale, so
neighbouring bins start with related embeddings and the new rows neither dominate nor vanish in the softmax.
Every existing row is copied bitwise.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from coordexp_swift.coord.codec import all_coord_tokens


def expand_vocab(src: str | Path, dst: str | Path, *, seed: int = 0) -> dict:
    """Write the expanded checkpoint to ``dst``; return ``{"coord_id_first", "coord_id_last", "vocab_rows"}``."""
    import torch
    from tokenizers import AddedToken
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from coordexp_swift.coord.vocab import coord_token_ids
    from coordexp_swift.tools.coord_init import init_coord_rows

    src_dir = Path(src)
    if not src_dir.is_dir():
        what = "is a file, not a checkpoint directory" if src_dir.exists() else "does not exist"
        raise ValueError(f"--src {src}: {what} (give a local Qwen3-VL checkpoint directory; hub ids are not "
                         f"downloaded)")
    if not (src_dir / "config.json").is_file():
        raise ValueError(f"--src {src}: no config.json in this directory; it is not a model checkpoint")
    processor = AutoProcessor.from_pretrained(src)
    tokenizer = processor.tokenizer
    literals = all_coord_tokens()
    vocab = tokenizer.get_vocab()
    present = [t for t in literals if t in vocab]
    if present:
        raise ValueError(f"{src} already has {len(present)} coord tokens (e.g. {present[0]}); nothing to expand")
    tokenizer.add_tokens([AddedToken(t, normalized=False, special=False) for t in literals])
    coord_ids = coord_token_ids(tokenizer)
    if coord_ids.tolist() != list(range(int(coord_ids[0]), int(coord_ids[0]) + len(literals))):
        raise RuntimeError("coord tokens did not receive contiguous ids")

    model = AutoModelForImageTextToText.from_pretrained(src, dtype="auto")
    rows = max(model.get_input_embeddings().weight.shape[0], len(tokenizer))
    model.resize_token_embeddings(rows, mean_resizing=False)
    gen = torch.Generator().manual_seed(seed)
    init_coord_rows(model.get_input_embeddings().weight.data, coord_ids, generator=gen)
    out_emb = model.get_output_embeddings()
    if out_emb is not None and out_emb.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr():
        init_coord_rows(out_emb.weight.data, coord_ids, generator=gen)

    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dst, safe_serialization=True)
    processor.save_pretrained(dst)
    info = {"coord_id_first": int(coord_ids[0]), "coord_id_last": int(coord_ids[-1]), "vocab_rows": rows,
            "source": str(src), "init": "coordexp_swift.tools.coord_init (smooth, seed %d)" % seed}
    (dst / "coordexp_expand_vocab.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="coordexp-swift expand-vocab", description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", required=True, help="Qwen3-VL checkpoint directory without coord tokens")
    ap.add_argument("--dst", required=True, help="output directory")
    ap.add_argument("--seed", type=int, default=0, help="seed of the new rows' random directions")
    args = ap.parse_args(argv)
    try:
        info = expand_vocab(args.src, args.dst, seed=args.seed)
    except ValueError as exc:
        print(f"coordexp-swift expand-vocab: {exc}", file=sys.stderr)
        return 2
    print(f"coord tokens at ids {info['coord_id_first']}..{info['coord_id_last']}; written to {args.dst}")
    return 0
