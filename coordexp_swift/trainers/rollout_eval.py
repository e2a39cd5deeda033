"""The eval step of both Stage-2 trainers (SPEC §7.1): greedy rollouts of the eval set, no teacher-forced loss.

Per eval batch (ms-swift-encoded rows, identity collator): greedy rollouts with the training backend on the training
prompts (``ChannelB.rollout`` with ``DecodeOptions.from_config(rm, greedy=True)``), the §3.6 token-aligned parser
(invalid → no predictions), the bbox-only filter (other geometries are drops), §3.6 matching. Logged (ms-swift adds
``eval_``): ``rollout/{precision,recall,f1}`` (rates recomputed from the reduced counters),
``rollout/{gt_objects,valid_pred_objects,matched,fp,fn,invalid_rollout,drop_invalid,gating_rejections,
truncated}_total``, ``rollout/drop/<reason>_total``, ``rollout/{gt,pred}_per_sample`` (means over samples) and, with
``rollout_matching.eval_detection.enabled`` (default), ``rollout/mAP``: every rank builds §7.2 records
(``coord_mode: norm1000``), they are gathered to rank 0, rank 0 runs the shared ``eval.coco_eval.evaluate_records``
and broadcasts ``max(bbox_AP, 0.0)``; any failure there → one warning naming the exception type and 0.0, training
continues. Every rank runs the same collectives in the same order whatever it observed.

:class:`RolloutEvalMixin` gives a trainer (that owns ``self.channel_b`` and ``self.rollout_evaluator``) this
``evaluate``; both Stage-2 trainers use it, so keys and values are identical on the same checkpoint and data.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Iterable, Mapping, Optional, Sequence

import torch

from coordexp_swift.eval import coco_eval
from coordexp_swift.eval.scores import token_prob_scores
from coordexp_swift.metrics.buffer import MetricsBuffer
from coordexp_swift.rollout.match import match_predictions
from coordexp_swift.rollout.parse import parse_rollout
from coordexp_swift.rollout.fragment import gt_object_from_payload
from coordexp_swift.trainers.channel_b import ChannelB, gt_rows

__all__ = ["EVAL_COUNTER_KEYS", "RolloutEvalMixin", "RolloutEvaluator"]

logger = logging.getLogger("swift.coordexp_swift")

EVAL_COUNTER_KEYS: tuple[str, ...] = tuple(
    f"rollout/{k}_total" for k in ("gt_objects", "valid_pred_objects", "matched", "fp", "fn", "invalid_rollout",
                                   "drop_invalid", "gating_rejections", "truncated"))


def _dist() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class RolloutEvaluator:
    """Eval rollouts → metrics (module docstring). ``channel_b``: the trainer's :class:`ChannelB` (backend, vocab,
    matching config); ``eval_detection``: ``rollout_matching.eval_detection``; ``output_dir``: where
    ``dump_records`` writes ``eval_records/step_<s>.jsonl`` (rank 0)."""

    def __init__(self, channel_b: ChannelB, eval_detection: Any, *, output_dir: Optional[str] = None) -> None:
        self.cb = channel_b
        self.det = eval_detection
        self.output_dir = output_dir

    def batch_metrics(self, model: torch.nn.Module, rows: Sequence[Mapping[str, Any]], *,
                      step: int) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """Counters (+ per-sample means and the three rates' presence) and §7.2 records of one eval batch."""
        cb = self.cb
        gts = gt_rows(rows, cb.vocab, object_field_order=cb.field_order)
        token_prob = getattr(self.det, "score_mode", "constant") == "token_prob"
        decode = dataclasses.replace(cb.eval_decode, logprobs=True) if token_prob else cb.eval_decode
        outs = cb.rollout(model, gts, step=step, decode=decode)
        c = dict.fromkeys(EVAL_COUNTER_KEYS, 0)
        drops: dict[str, int] = {}
        records = []
        for r, o in zip(gts, outs):
            parsed = parse_rollout(o.response_ids, cb.vocab, object_field_order=cb.field_order)
            gt = [gt_object_from_payload(x) for x in r.payload["objects"]]
            m = match_predictions(parsed.pred_bins, [g.bins for g in gt], candidate_top_k=cb.rm.candidate_top_k,
                                  iou_gate=cb.rm.maskiou_gate, fp_cost=cb.rm.fp_cost, fn_cost=cb.rm.fn_cost)
            c["rollout/gt_objects_total"] += len(gt)
            c["rollout/valid_pred_objects_total"] += len(parsed.objects)
            c["rollout/matched_total"] += len(m.matched)
            c["rollout/fp_total"] += len(m.fp)
            c["rollout/fn_total"] += len(m.fn)
            c["rollout/invalid_rollout_total"] += int(parsed.invalid_rollout)
            c["rollout/drop_invalid_total"] += parsed.n_drop_invalid
            c["rollout/gating_rejections_total"] += int(m.gating_rejections)
            c["rollout/truncated_total"] += int(parsed.truncated)
            for reason, n in parsed.drop_counts.items():
                if n:
                    drops[reason] = drops.get(reason, 0) + int(n)
            ex = r.extra
            scores = (token_prob_scores(parsed, o.token_logprobs) if token_prob
                      else [float(self.det.constant_score)] * len(parsed.objects))
            records.append({
                "image": str(ex.get("sample_id")), "width": ex.get("width"), "height": ex.get("height"),
                "coord_mode": "norm1000",
                "gt": [{"desc": g.desc, "bbox_2d": list(g.bins)} for g in gt],
                "pred": [{"desc": p.desc, "bbox_2d": list(p.bins), "score": sc}
                         for p, sc in zip(parsed.objects, scores)],
            })
        n = max(len(gts), 1)
        metrics: dict[str, float] = {k: float(v) for k, v in c.items()}
        metrics.update({f"rollout/drop/{k}_total": float(v) for k, v in sorted(drops.items())})
        metrics.update({"rollout/precision": 0.0, "rollout/recall": 0.0, "rollout/f1": 0.0,
                        "rollout/gt_per_sample": c["rollout/gt_objects_total"] / n,
                        "rollout/pred_per_sample": c["rollout/valid_pred_objects_total"] / n})
        return metrics, records

    def evaluate(self, model: torch.nn.Module, batches: Iterable[Sequence[Mapping[str, Any]]], *, step: int,
                 is_main: bool = True) -> dict[str, float]:
        """Run every batch (progress bar on rank 0), reduce over batches and ranks, add ``rollout/mAP``."""
        from tqdm.auto import tqdm

        buf = MetricsBuffer()
        records: list[dict[str, Any]] = []
        try:
            total = len(batches)  # type: ignore[arg-type]
        except TypeError:
            total = None
        for rows in tqdm(batches, total=total, desc="eval rollouts", disable=not is_main):
            m, recs = self.batch_metrics(model, rows, step=step)
            buf.add(m, weight=float(len(recs)))
            records.extend(recs)
        out = buf.reduce()  # collective on every rank
        if self.det.enabled:
            out["rollout/mAP"] = self.mean_ap(records, step=step)
        return out

    def mean_ap(self, records: list[dict[str, Any]], *, step: int) -> float:
        """Gather records to rank 0, ``evaluate_records`` there, broadcast; any failure → warning + 0.0."""
        if _dist():
            rank = torch.distributed.get_rank()
            gathered = [None] * torch.distributed.get_world_size() if rank == 0 else None
            torch.distributed.gather_object(records, gathered, dst=0)
            if rank == 0:
                records = [r for part in gathered for r in part]  # type: ignore[union-attr]
        else:
            rank = 0
        value = [0.0]
        if rank == 0:
            try:
                if self.det.dump_records and self.output_dir:
                    path = os.path.join(self.output_dir, "eval_records", f"step_{step}.jsonl")
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    with open(path, "w", encoding="utf-8") as fh:
                        fh.writelines(json.dumps(r) + "\n" for r in records)
                res = coco_eval.evaluate_records(records, self.det.iou_thrs)
                value = [max(float(res["metrics"]["bbox_AP"]), 0.0)]
            except Exception as exc:  # noqa: BLE001 - SPEC §7.1: any failure → warning and 0.0, training continues
                logger.warning("rollout/mAP failed at step %d (%s: %s); logging 0.0", step, type(exc).__name__, exc)
                value = [0.0]
        if _dist():
            torch.distributed.broadcast_object_list(value, src=0)
        return float(value[0])


class RolloutEvalMixin:
    """``evaluate`` of the Stage-2 trainers: the rollout eval step instead of a teacher-forced eval loss.

    Needs ``self.rollout_evaluator``. ``metric_for_best_model`` ``loss`` (ms-swift's default) has no eval value
    here; :meth:`_rollout_eval_setup` points it at ``rollout/mAP`` (greater is better) unless the run set another.
    """

    def _rollout_eval_setup(self) -> None:
        args = self.args
        if getattr(args, "metric_for_best_model", None) in (None, "loss", "eval_loss"):
            args.metric_for_best_model = "rollout/mAP" if self.rollout_evaluator.det.enabled else "rollout/f1"
            args.greater_is_better = True

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        dataloader = self.get_eval_dataloader(eval_dataset)
        model = self.model
        was_training = model.training
        metrics = self.rollout_evaluator.evaluate(model, dataloader, step=int(self.state.global_step),
                                                  is_main=self.is_world_process_zero())
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in metrics.items()}
        model.eval()  # the trainer's log() reduces the eval buffer while the model is in eval mode
        try:
            self.log(metrics)
        finally:
            model.train(was_training)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics
