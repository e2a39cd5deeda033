"""ms-swift 4.6's replacement of the Qwen3-VL forward, and the one way this package steps around it.

ms-swift's model loader (``_compat_qwen3_vl_mixed_data``) replaces ``Qwen3VLModel.forward`` and keeps transformers'
own as the instance attribute ``origin_forward``. With DeepSpeed on, the replacement encodes ``pixel_values`` itself
and builds the image mask from ``input_ids`` (to run a dummy image through the vision tower on text-only batches,
keeping ZeRO-3 ranks in collective lockstep). Two of our calls cannot go through it: a Channel-A ``inputs_embeds``
forward (no ``input_ids`` to build the mask from) and transformers 5.19's ``generate`` (images arrive as
``mm_encoder_outputs`` with ``pixel_values=None``, which the replacement treats as text-only). Within
:func:`transformers_forward` the patched module runs ``origin_forward``; every coordexp sample carries its image, so
the vision tower still runs on every rank. Imports only torch and the standard library (used by the training forward
preamble and by the HF rollout backend).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["swift_patched_module", "transformers_forward"]


def swift_patched_module(model: torch.nn.Module) -> torch.nn.Module | None:
    """The submodule whose ``forward`` ms-swift replaced (a class with ``get_rope_index`` carrying the instance
    attribute ``origin_forward`` = transformers' bound forward), or ``None`` (not loaded by ms-swift, or no Qwen-VL)."""
    for m in model.modules():
        if "origin_forward" in vars(m) and callable(getattr(type(m), "get_rope_index", None)):
            return m
    return None


@contextlib.contextmanager
def transformers_forward(model: torch.nn.Module) -> Iterator[None]:
    """Within the block the ms-swift-patched submodule (if any) runs transformers' ``origin_forward``; its own
    ``forward`` is restored in ``finally``. No-op for a model without the patch."""
    patched = swift_patched_module(model)
    if patched is None:
        yield
        return
    own = vars(patched).get("forward")
    patched.forward = vars(patched)["origin_forward"]
    try:
        yield
    finally:
        if own is None:
            del patched.forward
        else:
            patched.forward = own
