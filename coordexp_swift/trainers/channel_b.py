"""Channel-B, the one implementation shared by ``stage2_two_channel`` (B steps) and ``stage2_rollout_aligned``
(every step) — SPEC §3.6, §4.3-§4.4, §8.1.

One B micro-step (:meth:`ChannelB.step`)::

    pairs    = encode_gt_targets(rows)                 # prompt ids = the training encoding up to the answer
    outs     = self.rollout(model, pairs, step=s)      # B0: no grad, eval mode restored, left-padded batches
    targets  = self.build_targets(pairs, outs)         # B1 parse → B2 match → B3 Y_train → B4 meta (host)
    inputs   = self.forward_inputs(model, targets, pairs)   # TeacherForcingBatch (channel "B") + forward inputs
    logits   = forward(model, inputs, input_ids=ids)   # B5: ONE teacher-forced forward, context ``rollout``
    result   = objective(batch.with_logits(rollout=logits))

Prompts: the rollout prompt of a row is its training ``input_ids`` up to the first labelled position with the
row's own ``pixel_values`` / ``image_grid_thw`` / ``mm_token_type_ids`` (an
:class:`~coordexp_swift.rollout.prompts.EncodedPrompt`, never re-encoded), so the teacher-forced forward's prompt
ids equal the generation prompt ids by construction. ``rollout_backend: vllm`` encodes itself from the raw row
(``rollout_requests``: messages + images from the loader's ``coordexp_rollout_request`` column, plus the training
prompt ids it must reproduce); every backend's ``RolloutOutput.prompt_ids`` is checked equal to the training prompt
ids (``RuntimeError``). Backends with their own weights (vLLM) are synced once per optimizer step that rolls out,
before its first rollout (:meth:`ChannelB.prepare_rollouts`). The generated response is cut at its first ``<|im_end|>``
(backend contract); ``Y_train`` = parser prefix + FN fragment + ``<|im_end|>`` (``rollout/targets.py``).

Seeds (§3.6 B0): ``seed_base = norm(training.seed + s·1000003)`` per optimizer step ``s``; each B micro-step logs
``s``, ``micro_idx`` and ``seed_base`` at INFO. Greedy decoding reads no seed.

Metrics of a B micro-step (host numbers; §8.1 names; emitted only on steps that ran a rollout):
``rollout/{gt_objects,valid_pred_objects,matched,fp,fn,fn_appended,invalid_rollout,drop_invalid,
gating_rejections,truncated}_total``, ``rollout/drop/<reason>_total`` (reasons that occurred),
``rollout/fn_appended_per_sample_mean``, ``rollout/{precision,recall,f1}`` (rates, recomputed from the counters),
``stage2/raw_rollouts_total``, ``time/{rollout_generate,rollout_parse_match,forward}_s``,
``packing/{fill_ratio_mean,segments_total}``, plus the pipeline's ``loss/*`` and diagnostics.

Logits convention: ``logits[b, t]`` predicts the token at ``t + 1``; meta positions are segment-local.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch

from coordexp_swift.coord.vocab import VocabView
from coordexp_swift.data.rollout_request import ROLLOUT_REQUEST_COLUMN
from coordexp_swift.rollout.backends import DecodeOptions, RolloutOutput, build_backend
from coordexp_swift.rollout.match import match_predictions
from coordexp_swift.rollout.parse import parse_rollout
from coordexp_swift.rollout.prompts import EncodedPrompt
from coordexp_swift.rollout.seeds import RolloutSeeds
from coordexp_swift.rollout.targets import RolloutTarget, build_rollout_target, collate_targets
from coordexp_swift.rollout.fragment import gt_object_from_payload
from coordexp_swift.teacher_forcing.batch import TeacherForcingBatch
from coordexp_swift.teacher_forcing.executor import ObjectivePipeline, PipelineResult
from coordexp_swift.trainers.channel_a import encode_gt_targets
from coordexp_swift.trainers.forwards import forward, segment_inputs

__all__ = ["BStepOutput", "ChannelB", "GTRow", "audit_b_step", "rollout_metrics", "rollout_prompts",
           "rollout_requests", "rollout_targets"]

logger = logging.getLogger("swift.coordexp_swift")

_VISION_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw")


@dataclass(frozen=True, eq=False)
class GTRow:
    """One micro-batch row ready for Channel-B: ``prompt_ids [P]`` (the generation prompt), ``payload`` (the GT
    ``assistant_payload``), ``segment`` (the row's vision inputs and ``mm_token_type_ids`` of at least ``P``
    positions; ``encode_gt_targets`` segments) and ``extra`` (the row's ``_extra_kwargs``)."""

    prompt_ids: np.ndarray
    payload: Mapping[str, Any]
    segment: Mapping[str, Any]
    extra: Mapping[str, Any]


def gt_rows(rows: Sequence[Mapping[str, Any]], vocab: VocabView, *, object_field_order: str) -> list[GTRow]:
    """``GTRow`` of each ms-swift-encoded row (train mode, ``_extra_kwargs`` kept); validated like Channel-A."""
    out = []
    for row, (target, seg) in zip(rows, encode_gt_targets(rows, vocab, object_field_order=object_field_order)):
        extra = row["_extra_kwargs"]
        payload = extra["assistant_payload"]
        payload = json.loads(payload) if isinstance(payload, str) else payload
        out.append(GTRow(prompt_ids=target.prompt_ids, payload=payload, segment=seg, extra=extra))
    return out


def rollout_requests(rows: Sequence[GTRow]) -> list[dict[str, Any]]:
    """The generation requests of ``rows`` for a backend that encodes itself (vLLM): the row's raw ``messages``
    (no assistant turn) and ``images`` from ``_extra_kwargs[ROLLOUT_REQUEST_COLUMN]`` (written by the coordexp
    dataset loader), plus ``prompt_ids`` = the training prompt ids the backend must reproduce."""
    out = []
    for i, r in enumerate(rows):
        raw = r.extra.get(ROLLOUT_REQUEST_COLUMN)
        if raw is None:
            raise ValueError(f"row {i} (sample_id {r.extra.get('sample_id')}) has no {ROLLOUT_REQUEST_COLUMN!r} "
                             "column: rollout_backend: vllm needs the raw messages and images, which the coordexp "
                             "dataset loader adds (datasets given as coordexp JSONL files, remove_unused_columns: "
                             "false)")
        req = json.loads(raw) if isinstance(raw, str) else dict(raw)
        out.append({"messages": req["messages"], "images": list(req.get("images") or []),
                    "prompt_ids": tuple(int(t) for t in r.prompt_ids)})
    return out


def rollout_prompts(rows: Sequence[GTRow]) -> list[EncodedPrompt]:
    """The generation prompts of ``rows``: the training prompt ids with the row's own image inputs."""
    out = []
    for r in rows:
        p = len(r.prompt_ids)
        mm = r.segment.get("mm_token_type_ids")
        out.append(EncodedPrompt(
            input_ids=tuple(int(i) for i in r.prompt_ids), pixel_values=r.segment.get("pixel_values"),
            image_grid_thw=r.segment.get("image_grid_thw"),
            mm_token_type_ids=None if mm is None else torch.as_tensor(mm)[:p].long(),
            n_image_tokens=0 if mm is None else int(torch.as_tensor(mm)[:p].eq(1).sum())))
    return out


def rollout_targets(rows: Sequence[GTRow], responses: Sequence[Sequence[int]], *, vocab: VocabView, rm: Any,
                    object_field_order: str = "desc_first") -> list[RolloutTarget]:
    """B1-B4 for each (row, generated ids): strict parse, Hungarian match (``rm``: the ``rollout_matching``
    config: ``candidate_top_k``, ``maskiou_gate``, ``fp_cost``, ``fn_cost``), ``Y_train`` + meta. An invalid
    rollout takes the empty-opener fallback (all GT FN) and trains; dropped records are counted, never converted."""
    if len(rows) != len(responses):
        raise RuntimeError(f"{len(responses)} rollouts for {len(rows)} rows")
    out = []
    for r, ids in zip(rows, responses):
        parsed = parse_rollout(ids, vocab, object_field_order=object_field_order)
        gt = [gt_object_from_payload(o) for o in r.payload["objects"]]
        match = match_predictions(parsed.pred_bins, [o.bins for o in gt], candidate_top_k=rm.candidate_top_k,
                                  iou_gate=rm.maskiou_gate, fp_cost=rm.fp_cost, fn_cost=rm.fn_cost)
        out.append(build_rollout_target(prompt_ids=r.prompt_ids, parsed=parsed, match=match,
                                        assistant_payload=r.payload, vocab=vocab,
                                        object_field_order=object_field_order))
    return out


def rollout_metrics(targets: Sequence[RolloutTarget]) -> dict[str, float]:
    """§8.1 rollout counters of one micro-batch (host ints as floats); drop reasons only where they occurred."""
    tot = {k: 0 for k in ("matched", "fp", "fn", "dropped", "truncated", "invalid_rollout", "gating_rejections")}
    drops: dict[str, int] = {}
    for t in targets:
        for k in tot:
            tot[k] += int(t.counts[k])
        for reason, n in t.drop_counts.items():
            if n:
                drops[reason] = drops.get(reason, 0) + int(n)
    n = len(targets)
    fn_appended = sum(len(t.fn_gt_idx) for t in targets)
    m = {
        "rollout/gt_objects_total": tot["matched"] + tot["fn"],
        "rollout/valid_pred_objects_total": tot["matched"] + tot["fp"],
        "rollout/matched_total": tot["matched"],
        "rollout/fp_total": tot["fp"],
        "rollout/fn_total": tot["fn"],
        "rollout/fn_appended_total": fn_appended,
        "rollout/invalid_rollout_total": tot["invalid_rollout"],
        "rollout/drop_invalid_total": tot["dropped"],
        "rollout/gating_rejections_total": tot["gating_rejections"],
        "rollout/truncated_total": tot["truncated"],
        "rollout/fn_appended_per_sample_mean": fn_appended / max(n, 1),
        "stage2/raw_rollouts_total": n,
        "rollout/precision": 0.0, "rollout/recall": 0.0, "rollout/f1": 0.0,  # recomputed from the counters
    }
    m.update({f"rollout/drop/{k}_total": v for k, v in sorted(drops.items())})
    return {k: float(v) for k, v in m.items()}


def _segments(targets: Sequence[RolloutTarget], rows: Sequence[GTRow]) -> list[dict[str, Any]]:
    """Forward segments ``prompt + Y_train`` with the row's vision inputs (``mm_token_type_ids`` 0 on ``Y_train``)."""
    segs = []
    for t, r in zip(targets, rows):
        seg: dict[str, Any] = {"input_ids": torch.from_numpy(t.input_ids)}
        mm = r.segment.get("mm_token_type_ids")
        if mm is not None:
            p = len(t.prompt_ids)
            seg["mm_token_type_ids"] = torch.cat([torch.as_tensor(mm)[:p].long(),
                                                  torch.zeros(len(t.y_train_ids), dtype=torch.long)])
        for key in _VISION_KEYS:
            if r.segment.get(key) is not None:
                seg[key] = r.segment[key]
        segs.append(seg)
    return segs


@dataclass(frozen=True, eq=False)
class BInputs:
    """A B micro-batch ready for its one forward: ``batch`` (host-built, shipped), ``model_inputs`` (vision, mm
    types, ``attention_mask`` when padded), ``input_ids [B, T]``, ``position_ids [4, B, T]``, ``fill_ratio``."""

    batch: TeacherForcingBatch
    model_inputs: dict[str, torch.Tensor]
    input_ids: torch.Tensor
    position_ids: torch.Tensor
    fill_ratio: float


def forward_inputs(model: torch.nn.Module, targets: Sequence[RolloutTarget], rows: Sequence[GTRow], *,
                   vocab: VocabView, ce_table: Any, packed: bool, pad_id: int, max_length: Optional[int],
                   device: torch.device | str) -> BInputs:
    """Host work before the B forward: the channel-``B`` ``TeacherForcingBatch`` (context ``rollout``) and the
    forward inputs — one padding-free row (``pack_segments``, §3.3) when ``packed``, else right-padded rows.
    ``fill_ratio``: real tokens / row capacity (packed: ``max_length``; padded: ``B·T``)."""
    segs = _segments(targets, rows)
    lens = [int(s["input_ids"].shape[0]) for s in segs]
    ids, positions, inputs = segment_inputs(model, segs, packed=packed, pad_id=pad_id, max_length=max_length)
    if packed:
        fill = sum(lens) / float(max_length) if max_length else 1.0
    else:
        fill = sum(lens) / float(ids.numel())
    batch = collate_targets(targets, vocab=vocab, packed=packed, channel="B", contexts=("rollout",),
                            ce_table=ce_table, pad_id=pad_id, max_length=max_length if packed else None,
                            device=device)
    moved = {k: v.to(device, non_blocking=True) for k, v in inputs.items()}
    return BInputs(batch, moved, ids.to(device, non_blocking=True), positions.to(device, non_blocking=True), fill)


@dataclass(frozen=True, eq=False)
class BStepOutput:
    """``loss`` (graph-connected scalar), ``metrics`` (host floats, §8), ``weight`` (segment count), ``logits``,
    ``targets``, ``rollouts``."""

    loss: torch.Tensor
    metrics: dict[str, float]
    weight: int
    logits: torch.Tensor
    targets: list[RolloutTarget]
    rollouts: list[RolloutOutput]
    result: PipelineResult


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model


class ChannelB:
    """The shared Channel-B step (a helper object owned by each Stage-2 trainer; built once in ``__init__``).

    ``rm``: the ``rollout_matching`` config; ``template``: the training ms-swift template; ``objective``: the run's
    :class:`ObjectivePipeline`; ``training_seed``: ``TrainingArguments.seed``; ``world_size`` / ``rank`` /
    ``per_device_bs``: for request seeds (vLLM); ``accelerator``: the trainer's (vLLM weight sync under ZeRO-3).
    The backend is built lazily on the first rollout (the unwrapped model: DDP/DeepSpeed wrappers have no
    ``generate``); ``rollout_backend: vllm`` without the package fails here.

    Backends that keep their own copy of the weights (vLLM) are synced by :meth:`prepare_rollouts` before the first
    rollout of every optimizer step ``s`` that rolls out (B micro-steps, the eval step) and only once per ``s``;
    Channel-A steps never touch the backend. Every rank calls it at the same points (ZeRO-3 gathers are
    collectives).
    """

    def __init__(self, *, rm: Any, template: Any, vocab: VocabView, objective: ObjectivePipeline, packed: bool,
                 pad_id: int, max_length: Optional[int], object_field_order: str, training_seed: int,
                 world_size: int = 1, rank: int = 0, per_device_bs: Optional[int] = None,
                 accelerator: Any = None) -> None:
        self.rm = rm
        self.template = template
        self.vocab = vocab
        self.objective = objective
        self.packed = packed
        self.pad_id = int(pad_id)
        self.max_length = max_length
        self.field_order = object_field_order
        self.training_seed = int(training_seed)
        self.world_size, self.rank, self.per_device_bs = int(world_size), int(rank), per_device_bs
        self.accelerator = accelerator
        self.decode = DecodeOptions.from_config(rm)
        self.eval_decode = DecodeOptions.from_config(rm, greedy=True)
        self._backend = None
        self._backend_model = None
        if rm.rollout_backend == "vllm" and importlib.util.find_spec("vllm") is None:
            raise ImportError("rollout_matching.rollout_backend = 'vllm' needs the `vllm` package, which is not "
                              "importable; install it (GPU machines) or use rollout_backend: hf")

    @classmethod
    def from_trainer(cls, trainer: Any, cfg: Any, objective: ObjectivePipeline, vocab: VocabView, *,
                     packed: bool) -> "ChannelB":
        """The Channel-B object of a Stage-2 trainer (its args, template and the run's ``rollout_matching``)."""
        args = trainer.args
        tok = trainer.template.tokenizer
        return cls(rm=cfg.rollout_matching, template=trainer.template, vocab=vocab, objective=objective,
                   packed=packed, pad_id=int(tok.pad_token_id if tok.pad_token_id is not None else vocab.eos_id),
                   max_length=trainer.template.max_length, object_field_order=cfg.custom.object_field_order,
                   training_seed=int(args.seed), world_size=int(args.world_size), rank=int(args.process_index),
                   per_device_bs=int(args.per_device_train_batch_size),
                   accelerator=getattr(trainer, "accelerator", None))

    # --- B0 -----------------------------------------------------------------------------------------------------
    def backend(self, model: torch.nn.Module):
        """The rollout backend on the unwrapped ``model`` (built once per model object)."""
        inner = _unwrap(model)
        if self._backend is None or self._backend_model is not inner:
            # every backend gets the trainer's accelerator (hf: ZeRO-3 gather around generate; vllm: weight sync)
            kw: dict[str, Any] = {"accelerator": self.accelerator}
            if self.rm.rollout_backend == "vllm":
                kw["vllm_config"] = self.rm.vllm
            self._backend = build_backend(self.rm.rollout_backend, inner, self.template, **kw)
            self._backend_model = inner
        return self._backend

    def prepare_rollouts(self, model: torch.nn.Module, *, step: int) -> None:
        """Make the backend's weights those of optimizer step ``step`` (``sync_weights(step)``: a no-op for a
        backend that generates with the trained model itself, idempotent per ``step`` otherwise)."""
        sync = getattr(self.backend(model), "sync_weights", None)
        if sync is not None:
            sync(step)

    def rollout(self, model: torch.nn.Module, rows: Sequence[GTRow], *, step: int, micro_idx: int = 0,
                decode: Optional[DecodeOptions] = None) -> list[RolloutOutput]:
        """B0: one response per row (no grad, eval mode restored by the backend, left-padded batches of
        ``decode_batch_size``); logs ``s`` and ``seed_base`` at INFO. The prompt the backend saw must be the row's
        training prompt (``RuntimeError`` otherwise)."""
        seeds = RolloutSeeds.for_step(self.training_seed, step, micro_idx=micro_idx, world_size=self.world_size,
                                      rank=self.rank, per_device_bs=self.per_device_bs)
        logger.info("Channel-B rollout: s=%d micro_idx=%d seed_base=%d rank=%d n=%d backend=%s", step, micro_idx,
                    seeds.base, self.rank, len(rows), self.rm.rollout_backend)
        self.prepare_rollouts(model, step=step)
        backend = self.backend(model)
        samples = rollout_requests(rows) if self.rm.rollout_backend == "vllm" else rollout_prompts(rows)
        outs = backend.generate(samples, decode=decode or self.decode, seeds=seeds)
        if len(outs) != len(rows):
            raise RuntimeError(f"rollout backend returned {len(outs)} outputs for {len(rows)} prompts")
        for r, o in zip(rows, outs):
            if tuple(o.prompt_ids) != tuple(int(i) for i in r.prompt_ids):
                raise RuntimeError("the rollout prompt ids differ from the training prompt ids (SPEC §3.6 B4)")
        return outs

    # --- the step -----------------------------------------------------------------------------------------------
    def step(self, model: torch.nn.Module, rows: Sequence[Mapping[str, Any]], *, step: int,
             micro_idx: int = 0) -> BStepOutput:
        """One B micro-step on ms-swift-encoded ``rows`` (see the module docstring). Raises on any failure (no
        reroute to Channel-A)."""
        gts = gt_rows(rows, self.vocab, object_field_order=self.field_order)
        t0 = time.perf_counter()
        outs = self.rollout(model, gts, step=step, micro_idx=micro_idx)
        t1 = time.perf_counter()
        targets = rollout_targets(gts, [o.response_ids for o in outs], vocab=self.vocab, rm=self.rm,
                                  object_field_order=self.field_order)
        b = forward_inputs(model, targets, gts, vocab=self.vocab, ce_table=self.objective.ce_table,
                           packed=self.packed, pad_id=self.pad_id, max_length=self.max_length,
                           device=next(model.parameters()).device)
        t2 = time.perf_counter()
        logits = forward(model, b.model_inputs, input_ids=b.input_ids, position_ids=b.position_ids).logits
        t3 = time.perf_counter()
        result = self.objective(b.batch.with_logits(rollout=logits))
        metrics = dict(result.metrics)  # the step's one device-to-host transfer
        metrics.update(rollout_metrics(targets))
        metrics.update({"time/rollout_generate_s": t1 - t0, "time/rollout_parse_match_s": t2 - t1,
                        "time/forward_s": t3 - t2, "packing/fill_ratio_mean": b.fill_ratio,
                        "packing/segments_total": float(len(targets))})
        return BStepOutput(result.total, metrics, b.batch.num_segments, logits, targets, outs, result)


# --- the Channel-B half of `coordexp-swift audit-tensor-flow` (issue 10 item 4) -------------------------------------
def _record_calls(inner: torch.nn.Module):
    """Wrap ``inner.forward`` / ``inner.generate`` to record the training forwards (outside ``generate``) and the
    generate inputs; returns ``(records, restore)``."""
    import functools

    rec: dict[str, list] = {"fwd": [], "gen": []}
    in_gen = [False]
    had = {name: name in vars(inner) for name in ("forward", "generate")}
    orig_fwd, orig_gen = inner.forward, inner.generate

    @functools.wraps(orig_fwd)  # generate validates its kwargs against the forward signature
    def fwd(*a, **k):
        out = orig_fwd(*a, **k)
        if not in_gen[0]:
            rec["fwd"].append({"kwargs": k, "grad": torch.is_grad_enabled(), "cache": getattr(out, "past_key_values",
                                                                                           None)})
        return out

    def gen(*a, **k):
        rec["gen"].append({"input_ids": k["input_ids"].detach().cpu(),
                           "attention_mask": k["attention_mask"].detach().cpu(), "grad": torch.is_grad_enabled(),
                           "training": inner.training})
        in_gen[0] = True
        try:
            return orig_gen(*a, **k)
        finally:
            in_gen[0] = False

    inner.forward, inner.generate = fwd, gen

    def restore():
        for name, orig in (("forward", orig_fwd), ("generate", orig_gen)):
            if had[name]:
                setattr(inner, name, orig)
            else:
                delattr(inner, name)

    return rec, restore


def audit_b_step(cb: ChannelB, model: torch.nn.Module, rows: Sequence[Mapping[str, Any]], *,
                 step: int = 0) -> dict[str, Any]:
    """Run one real B step on ``rows`` with recording hooks and check the Channel-B invariants (SPEC §3.3, §3.6 B4,
    §4.3): ``one_forward`` (exactly one training forward, with ``input_ids``, grad on), ``forward_cache_free``
    (``use_cache=False``, no ``past_key_values`` in or out), ``rollout_no_grad_eval`` (every generate call under
    no_grad in eval mode; train mode restored after), ``prompt_ids_equal`` (each generate row's unpadded prompt =
    the teacher-forced segment's first ``prompt_len`` ids), ``supervised_in_assistant_span`` (every position with a
    CE weight > 0 or in a box group lies in ``[prompt_len, prompt_len + train_len)``), ``fp_weight_zero`` (every
    prefix position outside the matched records has CE weight 0 and no box group). Returns ``{check: bool, ...,
    "failed": [names], "counts": {...}}``; the caller decides whether to raise."""
    from coordexp_swift.teacher_forcing.batch import build_layout, ce_weights

    inner = _unwrap(model)
    was_training = inner.training
    rec, restore = _record_calls(inner)
    try:
        out = cb.step(model, rows, step=step)
    finally:
        restore()
    checks: dict[str, bool] = {}
    checks["one_forward"] = len(rec["fwd"]) == 1 and rec["fwd"][0]["grad"] \
        and rec["fwd"][0]["kwargs"].get("input_ids") is not None \
        and rec["fwd"][0]["kwargs"].get("inputs_embeds") is None
    checks["forward_cache_free"] = all(f["kwargs"].get("use_cache") is False
                                       and f["kwargs"].get("past_key_values") is None and f["cache"] is None
                                       for f in rec["fwd"])
    checks["rollout_no_grad_eval"] = bool(rec["gen"]) and all(not g["grad"] and not g["training"] for g in rec["gen"]) \
        and inner.training == was_training
    gen_prompts = [ids[mask.bool()].tolist() for g in rec["gen"] for ids, mask in zip(g["input_ids"],
                                                                                       g["attention_mask"])]
    ids = rec["fwd"][0]["kwargs"]["input_ids"].detach().cpu() if rec["fwd"] else None
    metas = [t.meta for t in out.targets]
    lens = [int(m.encoded_len) for m in metas]
    packed = ids is not None and ids.shape[0] == 1 and len(metas) > 1
    offsets = list(np.cumsum([0] + lens[:-1])) if packed else [0] * len(metas)
    prompt_ok = ids is not None and len(gen_prompts) == len(metas)
    for i, (m, off) in enumerate(zip(metas, offsets)):
        if not prompt_ok:
            break
        row = ids[0 if packed else i]
        prompt_ok = row[off: off + int(m.prompt_len)].tolist() == gen_prompts[i]
    checks["prompt_ids_equal"] = bool(prompt_ok)
    width = sum(lens) if packed else max(lens)
    layout = build_layout(tuple(metas), packed, (1 if packed else len(metas), width))
    w, _ = ce_weights(layout, "rollout", cb.objective.ce_table)
    span_ok, fp_ok, n_fp = True, True, 0
    for i, (m, off) in enumerate(zip(metas, offsets)):
        r = 0 if packed else i
        lo, hi = int(m.prompt_len), int(m.prompt_len) + int(m.train_len)
        seg_w = w[r, off: off + int(m.encoded_len)]
        sup = torch.nonzero(seg_w > 0).flatten().tolist()
        groups = [int(p) for g in (m.bbox_groups_prefix.pos, m.bbox_groups_fn.pos) for p in g.flatten().tolist()]
        span_ok &= all(lo <= p < hi for p in sup + groups)
        matched = set(int(p) for p in m.prefix_matched_pos.tolist())
        fp = [p for p in range(lo, lo + int(m.prefix_len)) if p not in matched]
        n_fp += len(fp)
        fp_ok &= all(float(seg_w[p]) == 0.0 for p in fp) and not (set(fp) & set(groups))
    checks["supervised_in_assistant_span"] = bool(span_ok)
    checks["fp_weight_zero"] = bool(fp_ok)
    return {**checks, "failed": [k for k, v in checks.items() if not v],
            "counts": {"segments": len(metas), "generate_calls": len(rec["gen"]), "fp_positions": n_fp,
                       "packed": bool(packed), **{k: v for k, v in out.metrics.items() if k.endswith("_total")}}}
