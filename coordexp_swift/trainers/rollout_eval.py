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

Uneven shards (DDP): ms-swift / accelerate shard the eval set with ``even_batches``, so when it does not divide over
the ranks the last shards are filled with repeats of the first samples (every rank runs the same number of batches:
the generate calls, and ZeRO-3's gathers inside them, stay in lockstep). Each row carries its dataset index
(:data:`EVAL_INDEX_KEY`, added by :class:`IndexedEvalDataset`); after the loop the ranks all-gather their index
lists (one ``all_gather_object``) and every rank keeps only the first occurrence of each index in (rank, position)
order (:func:`first_occurrences`), so every eval sample is counted exactly once in the counters, the per-sample
means and the records of ``rollout/mAP``. Rows without an index (direct callers; an iterable eval set, which is
not wrapped) are always kept; under DDP that logs a warning that repeats may be counted twice.

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

__all__ = ["EVAL_COUNTER_KEYS", "EVAL_INDEX_KEY", "IndexedEvalDataset", "RolloutEvalMixin", "RolloutEvaluator",
           "first_occurrences"]

logger = logging.getLogger("swift.coordexp_swift")

EVAL_COUNTER_KEYS: tuple[str, ...] = tuple(
    f"rollout/{k}_total" for k in ("gt_objects", "valid_pred_objects", "matched", "fp", "fn", "invalid_rollout",
                                   "drop_invalid", "gating_rejections", "truncated"))


#: key of an eval row's dataset index (added by :class:`IndexedEvalDataset`; read to drop the padding repeats).
EVAL_INDEX_KEY = "_coordexp_eval_index"


def _dist() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class IndexedEvalDataset(torch.utils.data.Dataset):
    """``dataset`` whose item ``i`` (an encoded row: a mapping) also carries ``EVAL_INDEX_KEY: i``."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.dataset[index]
        if not isinstance(row, Mapping):
            raise RuntimeError(f"eval dataset item {index} is a {type(row).__name__}, not an encoded row (mapping)")
        return {**row, EVAL_INDEX_KEY: int(index)}


def first_occurrences(per_rank: Sequence[Sequence[Optional[int]]]) -> list[list[bool]]:
    """Keep-masks, one per rank: ``True`` for the first occurrence of each dataset index in (rank, position) order;
    ``None`` (no index) is always kept."""
    seen: set[int] = set()
    out = []
    for idxs in per_rank:
        keep = []
        for i in idxs:
            keep.append(i is None or i not in seen)
            if i is not None:
                seen.add(i)
        out.append(keep)
    return out


class RolloutEvaluator:
    """Eval rollouts → metrics (module docstring). ``channel_b``: the trainer's :class:`ChannelB` (backend, vocab,
    matching config); ``eval_detection``: ``rollout_matching.eval_detection``; ``output_dir``: where
    ``dump_records`` writes ``eval_records/step_<s>.jsonl`` (rank 0)."""

    def __init__(self, channel_b: ChannelB, eval_detection: Any, *, output_dir: Optional[str] = None) -> None:
        self.cb = channel_b
        self.det = eval_detection
        self.output_dir = output_dir

    def batch_metrics(self, model: torch.nn.Module, rows: Sequence[Mapping[str, Any]], *,
                      step: int) -> list[tuple[Optional[int], dict[str, float], dict[str, Any]]]:
        """Per row of one eval batch: ``(dataset index or None, metrics, §7.2 record)``; ``metrics`` = the counters
        (+ ``rollout/drop/<reason>_total`` that occurred), ``rollout/{gt,pred}_per_sample`` and the three rates'
        presence (recomputed from the reduced counters)."""
        cb = self.cb
        gts = gt_rows(rows, cb.vocab, object_field_order=cb.field_order)
        token_prob = getattr(self.det, "score_mode", "constant") == "token_prob"
        decode = dataclasses.replace(cb.eval_decode, logprobs=True) if token_prob else cb.eval_decode
        outs = cb.rollout(model, gts, step=step, decode=decode)
        out = []
        for row, r, o in zip(rows, gts, outs):
            parsed = parse_rollout(o.response_ids, cb.vocab, object_field_order=cb.field_order)
            gt = [gt_object_from_payload(x) for x in r.payload["objects"]]
            m = match_predictions(parsed.pred_bins, [g.bins for g in gt], candidate_top_k=cb.rm.candidate_top_k,
                                  iou_gate=cb.rm.maskiou_gate, fp_cost=cb.rm.fp_cost, fn_cost=cb.rm.fn_cost)
            c = {"rollout/gt_objects_total": len(gt), "rollout/valid_pred_objects_total": len(parsed.objects),
                 "rollout/matched_total": len(m.matched), "rollout/fp_total": len(m.fp),
                 "rollout/fn_total": len(m.fn), "rollout/invalid_rollout_total": int(parsed.invalid_rollout),
                 "rollout/drop_invalid_total": parsed.n_drop_invalid,
                 "rollout/gating_rejections_total": int(m.gating_rejections),
                 "rollout/truncated_total": int(parsed.truncated)}
            metrics = {k: float(c[k]) for k in EVAL_COUNTER_KEYS}
            metrics.update({f"rollout/drop/{k}_total": float(n) for k, n in sorted(parsed.drop_counts.items()) if n})
            metrics.update({"rollout/precision": 0.0, "rollout/recall": 0.0, "rollout/f1": 0.0,
                            "rollout/gt_per_sample": float(len(gt)),
                            "rollout/pred_per_sample": float(len(parsed.objects))})
            ex = r.extra
            scores = (token_prob_scores(parsed, o.token_logprobs) if token_prob
                      else [float(self.det.constant_score)] * len(parsed.objects))
            record = {
                "image": str(ex.get("sample_id")), "width": ex.get("width"), "height": ex.get("height"),
                "coord_mode": "norm1000",
                "gt": [{"desc": g.desc, "bbox_2d": list(g.bins)} for g in gt],
                "pred": [{"desc": p.desc, "bbox_2d": list(p.bins), "score": sc}
                         for p, sc in zip(parsed.objects, scores)],
            }
            index = row.get(EVAL_INDEX_KEY)
            out.append((None if index is None else int(index), metrics, record))
        return out

    def evaluate(self, model: torch.nn.Module, batches: Iterable[Sequence[Mapping[str, Any]]], *, step: int,
                 is_main: bool = True) -> dict[str, float]:
        """Run every batch (progress bar on rank 0), drop the padding repeats (module docstring), reduce over
        samples and ranks, add ``rollout/mAP``."""
        from tqdm.auto import tqdm

        self.cb.prepare_rollouts(model, step=step)  # e.g. vLLM weight sync: a collective, before any batch
        samples: list[tuple[Optional[int], dict[str, float], dict[str, Any]]] = []
        try:
            total = len(batches)  # type: ignore[arg-type]
        except TypeError:
            total = None
        for rows in tqdm(batches, total=total, desc="eval rollouts", disable=not is_main):
            samples.extend(self.batch_metrics(model, rows, step=step))
        keep = self._keep_mask([i for i, _, _ in samples])
        buf = MetricsBuffer()
        records: list[dict[str, Any]] = []
        for k, (_, m, rec) in zip(keep, samples):
            if k:
                buf.add(m, weight=1.0)
                records.append(rec)
        out = buf.reduce()  # collective on every rank
        if self.det.enabled:
            out["rollout/mAP"] = self.mean_ap(records, step=step)
        return out

    @staticmethod
    def _keep_mask(indices: list[Optional[int]]) -> list[bool]:
        """This rank's keep-mask over its samples (one ``all_gather_object`` on every rank when distributed)."""
        if not _dist() or torch.distributed.get_world_size() == 1:
            return first_occurrences([indices])[0]
        gathered: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, indices)
        if any(i is None for part in gathered for i in part):  # same decision on every rank
            logger.warning("eval rows without a dataset index (key %r; e.g. an iterable eval set) under DDP: the "
                           "repeats that pad uneven shards cannot be dropped and may be counted twice",
                           EVAL_INDEX_KEY)
        return first_occurrences(gathered)[torch.distributed.get_rank()]

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
        dataset = self.eval_dataset if eval_dataset is None else eval_dataset
        if isinstance(dataset, str):
            dataset = self.eval_dataset[dataset]
        if dataset is None:
            raise ValueError("Trainer: evaluation requires an eval_dataset (val_dataset or split_dataset_ratio)")
        # every row carries its dataset index: the repeats that pad uneven DDP shards are counted once
        if not isinstance(dataset, torch.utils.data.IterableDataset):
            dataset = IndexedEvalDataset(dataset)
        dataloader = self.get_eval_dataloader(dataset)
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
