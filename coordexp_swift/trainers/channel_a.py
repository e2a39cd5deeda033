"""Channel-A of the two-channel trainer (SPEC §3.3-§3.4), without ms-swift imports (the trainer, tests and
``bench/stage2_channel_a.py`` share it).

* :func:`encode_gt_targets`: ms-swift-encoded rows (train mode, ``_extra_kwargs`` kept) → GT targets
  (``rollout.targets.build_gt_target`` on the training prompt = the generation prompt) and per-row forward inputs.
* :func:`build_channel_a_inputs`: host-built ``TeacherForcingBatch`` + forward inputs (padded or one packed row),
  positions computed once from ``input_ids``; everything shipped before the first forward.
* :func:`channel_a_forwards`: A1 with ``input_ids`` (context ``gt``), iterations 1..n−1 with ``inputs_embeds``
  (context ``self_context`` = the last one).

Logits convention: ``logits[b, t]`` predicts the token at ``t + 1``; a coord slot at input position p reads the
logits at p − 1.
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch

from coordexp_swift.coord.vocab import VocabView
from coordexp_swift.data.records import check_stage2_encoding
from coordexp_swift.rollout.targets import RolloutTarget, build_gt_target, collate_targets
from coordexp_swift.teacher_forcing import st
from coordexp_swift.teacher_forcing.batch import CEWeightTable, TeacherForcingBatch
from coordexp_swift.trainers.forwards import forward, segment_inputs

__all__ = ["ChannelAInputs", "GRAD_MODES", "audit_a_step", "build_channel_a_inputs", "channel_a_forwards",
           "encode_gt_targets", "input_embeddings"]

GRAD_MODES: tuple[str, ...] = ("em_detach", "unroll")


# --- GT targets from the encoded rows (host) ------------------------------------------------------------------
def _extra(row: Mapping[str, Any]) -> Mapping[str, Any]:
    extra = row.get("_extra_kwargs")
    if not isinstance(extra, Mapping) or "assistant_payload" not in extra:
        raise ValueError("the encoded row carries no assistant_payload: the two-channel trainer needs "
                         "`remove_unused_columns: false` in the run YAML (ms-swift then keeps the row's extra "
                         "fields in encoded['_extra_kwargs'])")
    return extra


def _payload(extra: Mapping[str, Any]) -> Mapping[str, Any]:
    payload = extra["assistant_payload"]
    return json.loads(payload) if isinstance(payload, str) else payload


def encode_gt_targets(rows: Sequence[Mapping[str, Any]], vocab: VocabView, *,
                      object_field_order: str = "desc_first") -> list[tuple[RolloutTarget, dict[str, Any]]]:
    """Channel-A targets of a micro-batch of ms-swift-encoded rows (train mode, ``_extra_kwargs`` kept).

    Per row: prompt = ``input_ids[:P]`` with ``P`` the first labelled position (the generation prompt);
    ``Y_train`` = the template's tokens ``input_ids[P : first <|im_end|> at or after P]`` (inclusive; the template's
    trailing newline is unsupervised and dropped). Returns ``(target, segment)`` pairs: ``target`` from
    ``build_gt_target`` (its ``y_train_ids`` checked equal to the template's), ``segment`` the forward inputs of
    the row cut to ``P + len(Y_train)`` (``input_ids [L]``, ``mm_token_type_ids``, ``pixel_values``,
    ``image_grid_thw``). ``ValueError`` (sample id + counts) when the coord-token count is not 4 × objects;
    ``RuntimeError`` when the rendered target differs from the template's tokens.
    """
    out = []
    coord_ids = vocab.coord_ids.numpy()
    for row in rows:
        extra = _extra(row)
        sid = extra.get("sample_id")
        payload = _payload(extra)
        ids = np.asarray(torch.as_tensor(row["input_ids"]).reshape(-1).cpu(), dtype=np.int64)
        labels = np.asarray(torch.as_tensor(row["labels"]).reshape(-1).cpu(), dtype=np.int64)
        sup = np.flatnonzero(labels != -100)
        if not len(sup):
            raise ValueError(f"sample_id {sid}: the encoded row has no labelled position (empty assistant turn?)")
        p = int(sup[0])
        eos = np.flatnonzero(ids[p:] == vocab.eos_id)
        if not len(eos):
            raise ValueError(f"sample_id {sid}: no <|im_end|> after the assistant start (truncated by "
                             "max_length?)")
        end = p + int(eos[0]) + 1
        y_template = ids[p:end]
        objects = payload.get("objects", []) if isinstance(payload, Mapping) else []
        check_stage2_encoding(sid, len(objects), int(np.isin(y_template, coord_ids).sum()))
        target = build_gt_target(prompt_ids=ids[:p], assistant_payload=payload, vocab=vocab,
                                 object_field_order=object_field_order)
        if not np.array_equal(target.y_train_ids, y_template):
            raise RuntimeError(f"sample_id {sid}: the GT target rendered from assistant_payload tokenises to "
                               f"{len(target.y_train_ids)} ids that differ from the template's {len(y_template)} "
                               "assistant ids; the dataset row and its payload disagree")
        seg: dict[str, Any] = {"input_ids": torch.from_numpy(ids[:end])}
        mm = row.get("mm_token_type_ids")
        if mm is not None:
            seg["mm_token_type_ids"] = torch.as_tensor(mm).reshape(-1)[:end].long()
        for key in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw"):
            if row.get(key) is not None:
                seg[key] = torch.as_tensor(row[key])
        out.append((target, seg))
    return out


@dataclass(frozen=True, eq=False)
class ChannelAInputs:
    """A Channel-A micro-batch ready for the forwards: ``batch`` (host-built, on the device), ``model_inputs``
    (vision inputs, ``mm_token_type_ids``, ``attention_mask`` when unpacked; on the device), ``input_ids [B, T]``
    and ``position_ids [4, B, T]`` (computed once from ``input_ids``; every forward gets them)."""

    batch: TeacherForcingBatch
    model_inputs: dict[str, torch.Tensor]
    input_ids: torch.Tensor
    position_ids: torch.Tensor


def build_channel_a_inputs(model: torch.nn.Module, pairs: Sequence[tuple[RolloutTarget, Mapping[str, Any]]], *,
                           vocab: VocabView, ce_table: CEWeightTable, contexts: Sequence[str], packed: bool,
                           pad_id: int, max_length: Optional[int], device: torch.device | str) -> ChannelAInputs:
    """Host work of a Channel-A step (before any forward): the ``TeacherForcingBatch`` and the forward inputs.

    ``packed``: one padding-free row (``pack_segments``; no attention mask, ``position_ids [4, 1, T]`` with row 0
    restarting per segment); else right-padded rows (``pad_id``) with ``attention_mask`` and ``positions_for``.
    ``ValueError`` when a packed row exceeds ``max_length``.
    """
    targets = [t for t, _ in pairs]
    segments = [s for _, s in pairs]
    device = torch.device(device)
    ids, positions, inputs = segment_inputs(model, segments, packed=packed, pad_id=pad_id, max_length=max_length)
    batch = collate_targets(targets, vocab=vocab, packed=packed, channel="A", contexts=contexts, ce_table=ce_table,
                            pad_id=pad_id, max_length=max_length if packed else None, device=device)
    moved = {k: v.to(device, non_blocking=True) for k, v in inputs.items()}
    return ChannelAInputs(batch=batch, model_inputs=moved, input_ids=ids.to(device, non_blocking=True),
                          position_ids=positions.to(device, non_blocking=True))


def input_embeddings(model: torch.nn.Module) -> torch.nn.Module:
    """The input-embedding module of ``model``, through DDP / DeepSpeed wrappers (``.module``); the forwards still
    go through the wrapper (gradient synchronisation)."""
    inner = model
    while not hasattr(inner, "get_input_embeddings") and hasattr(inner, "module"):
        inner = inner.module
    return inner.get_input_embeddings()


# --- Channel-A forwards ---------------------------------------------------------------------------------------
def channel_a_forwards(model: torch.nn.Module, a: ChannelAInputs, *, n_iter: int, grad_mode: str = "em_detach",
                       embed_mode: str = "st", temperature: float = 1.0) -> dict[str, torch.Tensor]:
    """SPEC §3.4 steps 2-5: ``{"gt": z⁰}`` (n = 1) or ``{"gt": z⁰, "self_context": z^{n−1}}``, each ``[B, T, V]``.

    A1: ``input_ids`` forward with grad. Iteration m = 1..n−1: ``E⁰ = input_embeddings(model)(input_ids)``
    (a fresh module call), ``E_c = embed(coord_ids)`` (module call), slot rows from ``z^{m−1}`` at p − 1 (coord
    slice, ``P = softmax(s/τ_A)``, detached iff ``em_detach``) built per ``embed_mode`` (``st.embed``) and scattered
    only at the coord-slot rows p; every other row (image placeholders included) stays bitwise ``E⁰``; forward with
    ``inputs_embeds`` and the same positions / vision inputs / mask. ``em_detach``: iterations 1..n−2 under
    ``no_grad``, the last with grad; ``unroll``: grad everywhere. Train/eval mode is never toggled.
    """
    if n_iter < 1:
        raise ValueError(f"stage2_ab.n_softctx_iter must be >= 1, got {n_iter}")
    if grad_mode not in GRAD_MODES:
        raise ValueError(f"stage2_ab.softctx_grad_mode {grad_mode!r}: accepted {', '.join(GRAD_MODES)}")
    batch = a.batch
    z = forward(model, a.model_inputs, input_ids=a.input_ids, position_ids=a.position_ids).logits
    out = {"gt": z}
    if n_iter == 1:
        return out
    embed = input_embeddings(model)
    coord_ids = batch.coord_ids
    pred_rows = batch.group_flat          # [4G] logits rows p − 1 of the box-group slots (group order)
    slot_rows = pred_rows + 1             # [4G] the slots' own input rows p
    bsz, seq = a.input_ids.shape
    detach = grad_mode == "em_detach"
    for m in range(1, n_iter):
        grad = not detach or m == n_iter - 1
        with contextlib.nullcontext() if grad else torch.no_grad():
            base = embed(a.input_ids)                                  # fresh E⁰ [B, T, H]
            e_c = embed(coord_ids)                                     # E_c [NUM_BINS, H]
            vocab = z.shape[-1]
            s = z.reshape(-1, vocab).index_select(0, pred_rows).index_select(1, coord_ids)
            if detach:
                s = s.detach()
            rows = st.embed(s.float(), e_c, embed_mode, temperature).to(base.dtype)
            flat = base.reshape(bsz * seq, -1).index_copy(0, slot_rows, rows)
            z = forward(model, a.model_inputs, inputs_embeds=flat.reshape(bsz, seq, -1),
                        position_ids=a.position_ids).logits
    out["self_context"] = z
    return out


# --- audit (the Channel-A half of `coordexp-swift audit-tensor-flow`, SPEC §3.3 / seed 001 2.3) ---------------
def _unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    inner = model
    while not hasattr(inner, "get_input_embeddings") and hasattr(inner, "module"):
        inner = inner.module
    return inner


def audit_a_step(model: torch.nn.Module, a: ChannelAInputs, *, n_iter: int = 2, grad_mode: str = "em_detach",
                 embed_mode: str = "st", temperature: float = 1.0) -> dict[str, Any]:
    """Run :func:`channel_a_forwards` once on ``a`` with the model's forward recorded and check the §3.3 / §3.4
    invariants on every forward:

    ``n_forwards`` (exactly ``n_iter`` model forwards, no ``generate``), ``cache_free`` (``use_cache=False``, no
    ``past_key_values`` in or out), ``one_token_source`` (A1: ``input_ids`` only; iterations ≥ 1: ``inputs_embeds``
    with ``input_ids=None``), ``positions`` (every forward gets the same ``[4, B, T]`` positions; packed: row 0 is 0
    exactly at each segment start and counts up by 1 inside segments), ``logits_aligned`` (``logits.shape[:2] ==
    [B, T]``), ``placeholders_unchanged`` (image/video placeholder rows of every ``inputs_embeds`` bitwise equal the
    embedding module's output), ``only_slots_differ`` (no row but the coord slots differs from it), ``grad_pattern``
    (``em_detach``: grad on A1 and the last iteration only; ``unroll``: everywhere). Returns ``{check: bool, ...,
    "failed": [names], "counts": {...}}``; the caller decides whether to raise. Gradients are not kept."""
    inner = _unwrapped(model)
    calls: list[dict[str, Any]] = []
    orig_fwd, orig_gen = inner.forward, getattr(inner, "generate", None)
    generated: list[bool] = []

    def fwd(*args: Any, **kwargs: Any) -> Any:
        out = orig_fwd(*args, **kwargs)
        calls.append({"kwargs": kwargs, "grad": torch.is_grad_enabled(),
                      "logits_shape": tuple(out.logits.shape[:2]),
                      "cache": getattr(out, "past_key_values", None)})
        return out

    def gen(*args: Any, **kwargs: Any) -> Any:
        generated.append(True)
        raise RuntimeError("Channel-A called generate")

    own = {k: inner.__dict__[k] for k in ("forward", "generate") if k in inner.__dict__}
    inner.forward = fwd
    if orig_gen is not None:
        inner.generate = gen
    try:
        channel_a_forwards(model, a, n_iter=n_iter, grad_mode=grad_mode, embed_mode=embed_mode,
                           temperature=temperature)
    finally:
        for k in ("forward", "generate"):
            if k in own:
                setattr(inner, k, own[k])
            elif k in inner.__dict__:
                delattr(inner, k)
    bsz, seq = a.input_ids.shape
    checks: dict[str, bool] = {}
    checks["n_forwards"] = len(calls) == n_iter and not generated
    checks["cache_free"] = all(c["kwargs"].get("use_cache") is False and c["kwargs"].get("past_key_values") is None
                               and c["cache"] is None for c in calls)
    checks["one_token_source"] = bool(calls) and calls[0]["kwargs"].get("input_ids") is not None \
        and calls[0]["kwargs"].get("inputs_embeds") is None \
        and all(c["kwargs"].get("input_ids") is None and c["kwargs"].get("inputs_embeds") is not None
                for c in calls[1:])
    pos_ok = all(c["kwargs"].get("position_ids") is a.position_ids for c in calls) \
        and tuple(a.position_ids.shape) == (4, bsz, seq)
    if pos_ok and a.batch.packed:
        row0 = a.position_ids[0, 0].cpu()
        starts, off = [], 0
        for m in a.batch.meta:
            starts.append(off)
            off += m.encoded_len
        expect = torch.cat([torch.arange(m.encoded_len) for m in a.batch.meta])
        pos_ok = off == seq and torch.equal(row0, expect) \
            and torch.nonzero(row0 == 0).reshape(-1).tolist() == starts
    checks["positions"] = pos_ok
    checks["logits_aligned"] = all(c["logits_shape"] == (bsz, seq) for c in calls)
    with torch.no_grad():
        base = input_embeddings(model)(a.input_ids).reshape(bsz * seq, -1)
    cfg = getattr(inner, "config", None)
    ph_ids = [i for i in (getattr(cfg, "image_token_id", None), getattr(cfg, "video_token_id", None)) if i is not None]
    placeholders = torch.zeros(bsz * seq, dtype=torch.bool, device=a.input_ids.device)
    for i in ph_ids:
        placeholders |= (a.input_ids == i).reshape(-1)
    slots = torch.zeros(bsz * seq, dtype=torch.bool, device=a.input_ids.device)
    slots[a.batch.group_flat + 1] = True
    ph_ok, slot_ok = True, True
    for c in calls[1:]:
        e = c["kwargs"]["inputs_embeds"].detach().reshape(bsz * seq, -1)
        differs = (e != base).any(-1)
        ph_ok &= bool(torch.equal(e[placeholders], base[placeholders]))
        slot_ok &= not bool((differs & ~slots).any())
    checks["placeholders_unchanged"] = ph_ok
    checks["only_slots_differ"] = slot_ok
    want = [True] * n_iter if grad_mode == "unroll" else [True] + [False] * max(n_iter - 2, 0) + [True] * (n_iter > 1)
    checks["grad_pattern"] = [c["grad"] for c in calls] == want
    return {**checks, "failed": [k for k, v in checks.items() if not v],
            "counts": {"forwards": len(calls), "segments": a.batch.num_segments, "slots": int(slots.sum()),
                       "placeholder_rows": int(placeholders.sum()), "packed": a.batch.packed}}
