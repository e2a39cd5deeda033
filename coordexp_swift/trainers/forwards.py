"""The forward preamble every trainer uses (SPEC §3.3; ARCHITECTURE §3 Qwen3-VL facts).

- :func:`forward` strips non-forward keys (:data:`NON_FORWARD_KEYS`, the one list), sets ``use_cache=False``, refuses
  ``past_key_values``, demands exactly one of ``input_ids`` / ``inputs_embeds``, refuses an ``inputs_embeds`` forward
  without explicit ``position_ids`` and checks the logits shape (``RuntimeError`` for each broken invariant).
- :func:`positions_for` computes the 4-row positions ``[text; mRoPE t, h, w]`` once from ``input_ids`` and the image
  grid with the model's own ``get_rope_index`` (no reimplementation of mRoPE). Every later ``inputs_embeds`` forward
  must get them: with ``input_ids=None`` transformers 5.19's Qwen3-VL otherwise reuses the ``rope_deltas`` cached by
  the *previous* call (another image, another length) or falls back to text-only positions, silently. Passing
  ``position_ids`` explicitly also means the model never reads nor writes that cache.
- :func:`pack_segments` builds the packed row of SPEC §3.3: all segments of a micro-step as one padding-free row
  (bsz 1), ``position_ids [4, 1, T]`` with row 0 restarting at 0 per segment and the mRoPE rows of each segment from
  the model's rope index, exactly as ms-swift's ``Qwen2VLTemplate.packing_row`` does for ``padding_free``. The row
  carries no ``attention_mask``: transformers derives the block-diagonal causal mask (sdpa) or the varlen boundaries
  (flash-attention) from the restarts of row 0, which needs ``use_cache=False`` (a ``DynamicCache`` disables the
  detection).

- ``rollout.swift_forward.transformers_forward`` (shared with the HF rollout backend): ms-swift 4.6 replaces
  ``Qwen3VLModel.forward`` (``_compat_qwen3_vl_mixed_data``) and keeps the transformers one as the instance
  attribute ``origin_forward``. Under DeepSpeed its replacement builds the image mask from ``input_ids`` (it runs a
  dummy image through the vision tower for text-only batches, to keep ZeRO-3 collectives in lockstep), so an
  ``inputs_embeds`` forward with vision inputs (Channel-A iteration m >= 1) dies there. :func:`forward` therefore
  runs every ``inputs_embeds`` forward through ``origin_forward`` (transformers finds the placeholder rows by
  embedding equality, which is why they stay bitwise unchanged): every coordexp sample carries an image, so the
  vision tower runs on every rank exactly as in ms-swift's branch. An ``inputs_embeds`` forward without vision
  inputs under that patch with DeepSpeed on raises ``RuntimeError``. ``input_ids`` forwards keep ms-swift's forward.

Logits convention: ``logits[:, t]`` predicts the token at ``t + 1`` (no shift here). No host sync in this module
after a forward is queued: the guards compare shapes only; positions are computed before the forward (on the host
when the caller passes host tensors, then moved with ``non_blocking=True``).
"""
from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from coordexp_swift.rollout.swift_forward import swift_patched_module, transformers_forward

# Keys a collator / encoder / trainer puts into a micro-batch that the model forward must not see. ms-swift's
# collator: labels, loss_scale, text_position_ids (its padded `position_ids` are the 3 mRoPE rows; ms-swift's own
# compute_loss drops the text row too), channel; the Trainer: compute_loss_func, num_items_in_batch; the template's
# `encode`: length, lengths; ours: encoded_len, segment_offsets, meta; `remove_unused_columns=False`: _extra_kwargs.
NON_FORWARD_KEYS: tuple[str, ...] = (
    "labels", "compute_loss_func", "loss_scale", "text_position_ids", "channel", "num_items_in_batch",
    "length", "lengths", "encoded_len", "segment_offsets", "meta", "_extra_kwargs",
)
# Keys the preamble owns: always overridden / checked, never taken blindly from the inputs.
_OWNED_KEYS = ("input_ids", "inputs_embeds", "position_ids", "use_cache", "past_key_values", "logits_to_keep")
# Per-segment multimodal tensors concatenated along dim 0 in a packed row (ms-swift `_data_collator_mm_data`).
_MM_CONCAT_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw")


def forward_kwargs(
    inputs: Mapping[str, Any],
    *,
    input_ids: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    allow_logits_to_keep: bool = False,
) -> dict[str, Any]:
    """The keyword arguments of one model forward, from a micro-batch ``inputs``.

    Token source: if ``input_ids`` or ``inputs_embeds`` is given here, those two keywords replace whatever ``inputs``
    carries (e.g. a micro-batch with ``input_ids`` and an ``inputs_embeds=E`` iteration: the ids are dropped);
    otherwise they come from ``inputs``. Exactly one must be non-None, else ``RuntimeError``. ``position_ids`` given
    here replaces ``inputs["position_ids"]``. An ``inputs_embeds`` forward without positions raises
    ``RuntimeError`` (the ``rope_deltas`` cache trap). ``use_cache=False`` always; a non-None
    ``past_key_values`` in ``inputs`` raises. ``logits_to_keep`` passes through only with ``allow_logits_to_keep``
    (ms-swift SFT); otherwise its presence (any value but ``None``/``0``) raises. Keys of :data:`NON_FORWARD_KEYS`
    are dropped; every other key (vision inputs, ``attention_mask``, ``mm_token_type_ids``, ``cu_seq_lens_*``...)
    passes unchanged.
    """
    if inputs.get("past_key_values") is not None:
        raise RuntimeError("training forwards take no past_key_values (SPEC §3.3); the micro-batch carries one")
    keep = inputs.get("logits_to_keep")
    if keep is not None and not (isinstance(keep, int) and keep == 0) and not allow_logits_to_keep:
        raise RuntimeError(f"logits_to_keep={keep!r} would slice the logits; Stage-2 forwards need logits at every "
                           "position (SPEC §3.3): drop it from the micro-batch")
    if input_ids is None and inputs_embeds is None:
        input_ids, inputs_embeds = inputs.get("input_ids"), inputs.get("inputs_embeds")
    if (input_ids is None) == (inputs_embeds is None):
        which = "both" if input_ids is not None else "neither"
        raise RuntimeError(f"a forward takes exactly one of input_ids / inputs_embeds; got {which}")
    if position_ids is None:
        position_ids = inputs.get("position_ids")
    if inputs_embeds is not None and position_ids is None:
        raise RuntimeError("an inputs_embeds forward needs explicit position_ids (positions_for(model, batch), "
                           "computed once from input_ids): without them Qwen3-VL reuses the rope_deltas cached by "
                           "the previous call or falls back to text-only positions")
    fwd = {k: v for k, v in inputs.items() if k not in NON_FORWARD_KEYS and k not in _OWNED_KEYS}
    if input_ids is not None:
        fwd["input_ids"] = input_ids
    else:
        fwd["inputs_embeds"] = inputs_embeds
    if position_ids is not None:
        fwd["position_ids"] = position_ids
    if allow_logits_to_keep and keep is not None:
        fwd["logits_to_keep"] = keep
    fwd["use_cache"] = False
    return fwd


def forward(
    model: torch.nn.Module,
    inputs: Mapping[str, Any],
    *,
    input_ids: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    sft_labels: torch.Tensor | None = None,
):
    """One training forward through the preamble; returns the model output (``.logits [B, T, V]``).

    Arguments as in :func:`forward_kwargs`. Shape guard (``RuntimeError``): by default (Stage-2) ``logits_to_keep``
    is refused and ``logits.shape[:2] == ids.shape[:2]`` (``ids`` = the ``input_ids [B, T]`` or ``inputs_embeds
    [B, T, H]`` of the call). ms-swift SFT (Stage-1) passes ``sft_labels`` = the collator's labels: then
    ``logits_to_keep`` passes through (ms-swift compacts labels and logits alike) and the guard is
    ``logits.shape[:2] == sft_labels.shape[:2]``. The output's cache must be ``None``.
    """
    fwd = forward_kwargs(inputs, input_ids=input_ids, inputs_embeds=inputs_embeds, position_ids=position_ids,
                         allow_logits_to_keep=sft_labels is not None)
    if "inputs_embeds" in fwd:
        _require_vision_under_deepspeed(model, fwd)
        with transformers_forward(model):
            outputs = model(**fwd)
    else:
        outputs = model(**fwd)
    logits = outputs.logits
    if sft_labels is not None:
        want, what = tuple(sft_labels.shape[:2]), "labels"
    else:
        src = fwd.get("input_ids", fwd.get("inputs_embeds"))
        want, what = tuple(src.shape[:2]), "input_ids" if "input_ids" in fwd else "inputs_embeds"
    if tuple(logits.shape[:2]) != want:
        raise RuntimeError(f"logits {tuple(logits.shape[:2])} do not align with {what} {want}")
    if getattr(outputs, "past_key_values", None) is not None:
        raise RuntimeError("the forward returned a cache although use_cache=False (SPEC §3.3)")
    return outputs


# --- ms-swift's Qwen3-VL forward patch ------------------------------------------------------------------------------
_VISION_KEYS = ("pixel_values", "pixel_values_videos")


def _require_vision_under_deepspeed(model: torch.nn.Module, fwd: Mapping[str, Any]) -> None:
    """``RuntimeError`` for an ``inputs_embeds`` forward without ``pixel_values`` / ``pixel_values_videos`` on an
    ms-swift-patched model while DeepSpeed is on (ms-swift's ``swift.utils.is_deepspeed_enabled``): ms-swift's
    DeepSpeed branch runs a dummy image through the vision tower for text-only batches (ZeRO-3 collective lockstep),
    which ``origin_forward`` would skip, and that branch itself cannot take ``inputs_embeds``. ms-swift's flag is read
    from the already-imported module (the patch exists only once ms-swift loaded the model): no ms-swift import here
    (layering)."""
    if any(fwd.get(k) is not None for k in _VISION_KEYS) or swift_patched_module(model) is None:
        return
    swift_utils = sys.modules.get("swift.utils")
    if swift_utils is not None and swift_utils.is_deepspeed_enabled():
        raise RuntimeError(
            "an inputs_embeds forward without pixel_values under DeepSpeed: ms-swift's Qwen3-VL forward (its "
            "DeepSpeed branch) builds the image mask from input_ids and cannot take inputs_embeds, and "
            "transformers' forward would skip the vision tower that ms-swift runs on a dummy image to keep "
            "ZeRO-3 ranks in lockstep; every coordexp sample must carry its image")


# --- positions ----------------------------------------------------------------------------------------------------
def rope_module(model: torch.nn.Module) -> torch.nn.Module:
    """The submodule whose class defines ``get_rope_index`` (``Qwen3VLModel`` inside
    ``Qwen3VLForConditionalGeneration``, also under PEFT / DDP / DeepSpeed wrappers). ``RuntimeError`` if none."""
    for m in model.modules():
        if callable(getattr(type(m), "get_rope_index", None)):
            return m
    raise RuntimeError(f"{type(model).__name__} has no submodule with get_rope_index (not a Qwen-VL model?)")


def _as_2d_long(x: Any) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=torch.long)
    return t[None] if t.ndim == 1 else t


def _mm_token_types(rope: torch.nn.Module, ids: torch.Tensor, mm: Any) -> torch.Tensor:
    """``mm_token_type_ids [B, T]`` (0 text, 1 image, 2 video): the given ones, else derived from the config ids."""
    if mm is not None:
        return _as_2d_long(mm).to(ids.device)
    cfg = rope.config
    return (ids == cfg.image_token_id).long() + 2 * (ids == cfg.video_token_id).long()


def positions_for(model: torch.nn.Module, inputs: Mapping[str, Any], *,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """``position_ids [4, B, T]`` (int64) for a right-padded batch (or one sequence), computed ONCE from ``input_ids``.

    Row 0 is the text position ``arange(T)`` on every row (ms-swift's ``_concat_text_position_ids``); rows 1..3 are
    the mRoPE t/h/w positions from the model's own ``get_rope_index(input_ids, mm_token_type_ids, image_grid_thw,
    video_grid_thw, attention_mask)`` (0 at padding). ``inputs``: ``input_ids [B, T]`` (or ``[T]``, tensor or list),
    optional ``attention_mask``, ``mm_token_type_ids`` (derived from the config's image/video token ids when
    absent), ``image_grid_thw``, ``video_grid_thw``. Computed where ``input_ids`` lives (pass host tensors to keep
    the device free), returned on ``device`` (``non_blocking``) if given. Reads and writes no ``rope_deltas`` cache.
    """
    rope = rope_module(model)
    ids = _as_2d_long(inputs["input_ids"])
    mm = _mm_token_types(rope, ids, inputs.get("mm_token_type_ids"))
    mask = inputs.get("attention_mask")
    with torch.no_grad():
        mrope, _ = rope.get_rope_index(ids, mm_token_type_ids=mm, image_grid_thw=inputs.get("image_grid_thw"),
                                       video_grid_thw=inputs.get("video_grid_thw"),
                                       attention_mask=None if mask is None else _as_2d_long(mask).to(ids.device))
    text = torch.arange(ids.shape[1], dtype=mrope.dtype, device=mrope.device).expand(1, *ids.shape)
    pos = torch.cat([text, mrope], dim=0)
    return pos if device is None else pos.to(device, non_blocking=True)


# --- the packed row -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PackedRow:
    """One padding-free row of a micro-step's segments (SPEC §3.3).

    ``inputs``: ``input_ids [1, T]``, ``position_ids [4, 1, T]`` (row 0 restarts at 0 per segment),
    ``mm_token_type_ids [1, T]``, the segments' ``pixel_values`` / ``image_grid_thw`` (and video keys) concatenated
    in segment order, and ``labels [1, T]`` when every segment has labels (a non-forward key: :func:`forward` drops
    it). No ``attention_mask``. ``offsets[i]``: start of segment ``i`` in the row; ``encoded_len[i]``: its length;
    segment ``i`` is ``row[offsets[i]: offsets[i] + encoded_len[i]]``.
    """

    inputs: dict[str, torch.Tensor]
    offsets: tuple[int, ...]
    encoded_len: tuple[int, ...]

    @property
    def length(self) -> int:
        return sum(self.encoded_len)

    def segment(self, i: int) -> slice:
        return slice(self.offsets[i], self.offsets[i] + self.encoded_len[i])

    def to(self, device: torch.device | str) -> "PackedRow":
        """The same row with every tensor moved to ``device`` (``non_blocking``)."""
        moved = {k: v.to(device, non_blocking=True) for k, v in self.inputs.items()}
        return PackedRow(moved, self.offsets, self.encoded_len)


def pack_segments(model: torch.nn.Module, segments: Sequence[Mapping[str, Any]], *,
                  max_length: int | None) -> PackedRow:
    """Pack encoded segments (each a ms-swift ``template.encode`` result: ``input_ids`` list/tensor ``[L]``,
    optional ``labels``, ``mm_token_type_ids``, ``pixel_values``, ``image_grid_thw``, video keys) in the given order
    into one :class:`PackedRow`, on the host.

    Each segment's mRoPE rows come from :func:`positions_for` on that segment alone (as ms-swift's ``packing_row``);
    row 0 is ``arange(L_i)`` per segment. ``ValueError`` when there is no segment, when the total length exceeds
    ``max_length`` (checked first; ``None`` = the template sets no limit), or when a segment's ``pixel_values`` /
    ``pixel_values_videos`` come without their grid.
    """
    if not segments:
        raise ValueError("pack_segments: no segments to pack")
    ids = [_as_2d_long(s["input_ids"]) for s in segments]
    lens = tuple(int(t.shape[1]) for t in ids)
    if any(t.shape[0] != 1 for t in ids):
        raise ValueError(f"pack_segments: each segment is one sequence; got input_ids of shapes "
                         f"{[tuple(t.shape) for t in ids]}")
    total = sum(lens)
    if max_length is not None and total > max_length:
        raise ValueError(f"packed row of {len(lens)} segments is {total} tokens (encoded_len {list(lens)}) > "
                         f"template.max_length {max_length}; lower the per-step sample count or raise max_length")
    for i, s in enumerate(segments):
        for pix, grid in (("pixel_values", "image_grid_thw"), ("pixel_values_videos", "video_grid_thw")):
            if s.get(pix) is not None and s.get(grid) is None:
                raise ValueError(f"pack_segments: segment {i} has {pix} but no {grid}")
    rope = rope_module(model)
    positions, mm_types = [], []
    for s, t in zip(segments, ids):
        mm = _mm_token_types(rope, t, s.get("mm_token_type_ids"))
        seg = {"input_ids": t, "mm_token_type_ids": mm,
               **{k: s[k] for k in ("image_grid_thw", "video_grid_thw") if s.get(k) is not None}}
        positions.append(positions_for(rope, seg))
        mm_types.append(mm)
    row: dict[str, torch.Tensor] = {
        "input_ids": torch.cat(ids, dim=1),
        "position_ids": torch.cat(positions, dim=-1),
        "mm_token_type_ids": torch.cat(mm_types, dim=1),
    }
    for key in _MM_CONCAT_KEYS:
        parts = [torch.as_tensor(s[key]) for s in segments if s.get(key) is not None]
        if parts:
            row[key] = torch.cat(parts, dim=0)
    if all(s.get("labels") is not None for s in segments):
        row["labels"] = torch.cat([_as_2d_long(s["labels"]) for s in segments], dim=1)
    offsets = (0, *itertools.accumulate(lens[:-1]))
    return PackedRow(row, offsets, lens)


def segment_inputs(model: torch.nn.Module, segments: Sequence[Mapping[str, Any]], *, packed: bool, pad_id: int,
                   max_length: int | None) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Forward inputs of encoded ``segments`` (as for :func:`pack_segments`), on the host:
    ``(input_ids [B, T], position_ids [4, B, T], other model inputs)``.

    ``packed``: one padding-free row (:func:`pack_segments`, B = 1, no attention mask). Else right-padded rows
    (``pad_id``) with ``attention_mask`` (1 on real tokens), ``mm_token_type_ids`` when every segment has them (0 on
    pads), vision tensors concatenated in segment order, and positions from :func:`positions_for` on the padded batch.
    """
    if packed:
        inputs = dict(pack_segments(model, segments, max_length=max_length).inputs)
        return inputs.pop("input_ids"), inputs.pop("position_ids"), inputs
    lens = [int(torch.as_tensor(s["input_ids"]).reshape(-1).shape[0]) for s in segments]
    width = max(lens)
    ids = torch.full((len(segments), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(segments), width), dtype=torch.long)
    inputs: dict[str, torch.Tensor] = {"attention_mask": mask}
    mm = torch.zeros((len(segments), width), dtype=torch.long) \
        if all(s.get("mm_token_type_ids") is not None for s in segments) else None
    for i, (s, n) in enumerate(zip(segments, lens)):
        ids[i, :n] = torch.as_tensor(s["input_ids"]).reshape(-1)
        mask[i, :n] = 1
        if mm is not None:
            mm[i, :n] = torch.as_tensor(s["mm_token_type_ids"]).reshape(-1)
    if mm is not None:
        inputs["mm_token_type_ids"] = mm
    for key in _MM_CONCAT_KEYS:
        parts = [torch.as_tensor(s[key]) for s in segments if s.get(key) is not None]
        if parts:
            inputs[key] = torch.cat(parts, dim=0)
    return ids, positions_for(model, {"input_ids": ids, **inputs}), inputs
