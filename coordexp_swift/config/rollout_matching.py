"""The ``rollout_matching`` section: rollout backend, decoding, matching, eval and the rollout-aligned objective
(SPEC §3.6, §3.7, §7.1). Required by both Stage-2 variants. Defaults live here and nowhere else."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from coordexp_swift.config.strict import bounded

__all__ = [
    "DecodingConfig",
    "EvalDetectionConfig",
    "RolloutMatchingConfig",
    "VllmConfig",
]


@dataclass(frozen=True, kw_only=True)
class DecodingConfig:
    """``rollout_matching.decoding`` (SPEC §3.6 B0). Sampling happens iff ``temperature > 0``.

      temperature: ≥ 0; 0.0 = greedy/beam (deterministic).
      top_p: nucleus mass in (0, 1]; 1.0 = off.
      top_k: -1 = off, else an int ≥ 1.
    """

    temperature: float = bounded(0.0, ge=0)
    top_p: float = bounded(1.0, gt=0, le=1)
    top_k: int = -1

    def validate(self, path: str) -> None:
        """``top_k`` is -1 (off) or ≥ 1."""
        if self.top_k != -1 and self.top_k < 1:
            raise ValueError(f"{path}.top_k = {self.top_k}: must be -1 (disabled) or an int >= 1")


@dataclass(frozen=True, kw_only=True)
class VllmConfig:
    """``rollout_matching.vllm``: colocated vLLM engine knobs (only read when ``rollout_backend: vllm``).

      gpu_memory_utilization: fraction of each GPU's memory vLLM may reserve, in (0, 1]; it shares the GPU with
        the trainer, so the default leaves room for training.
      tensor_parallel_size: GPUs per vLLM engine (int ≥ 1).
      max_model_len: context length cap for the engine (``None`` = the model's own limit; else int ≥ 1).
      enable_prefix_caching: reuse the KV cache of shared prompt prefixes across requests.
    """

    gpu_memory_utilization: float = bounded(0.45, gt=0, le=1)
    tensor_parallel_size: int = bounded(1, ge=1)
    max_model_len: Optional[int] = bounded(None, ge=1)
    enable_prefix_caching: bool = True


@dataclass(frozen=True, kw_only=True)
class EvalDetectionConfig:
    """``rollout_matching.eval_detection`` (SPEC §7.1); always constructed.

      enabled: compute ``rollout/mAP`` (COCO bbox AP@[.50:.95]) in the eval step.
      metrics: ``coco`` (only value).
      score_mode: ``constant`` (default): every prediction is scored ``constant_score``; ``token_prob``: the
        geometric mean of the probabilities of the object's generated desc and coord tokens
        (:mod:`coordexp_swift.eval.scores`; greedy eval rollouts return per-token log-probs).
      constant_score: finite score ≥ 0 given to every prediction.
      iou_thrs: ``None`` (COCO's .50:.05:.95) or a non-empty, duplicate-free list of floats in (0, 1).
      dump_records: also write the gathered eval records (gt_vs_pred JSONL) beside the outputs.
    """

    enabled: bool = True
    metrics: Literal["coco"] = "coco"
    score_mode: Literal["constant", "token_prob"] = "constant"
    constant_score: float = bounded(1.0, ge=0)
    iou_thrs: Optional[tuple[float, ...]] = bounded(None, item_bounds={"gt": 0, "lt": 1})
    dump_records: bool = False

    def validate(self, path: str) -> None:
        """``iou_thrs`` non-empty and duplicate-free when set."""
        if self.iou_thrs is None:
            return
        if not self.iou_thrs:
            raise ValueError(f"{path}.iou_thrs: must be null (COCO default) or a non-empty list of floats in (0, 1)")
        if len(set(self.iou_thrs)) != len(self.iou_thrs):
            raise ValueError(f"{path}.iou_thrs = {list(self.iou_thrs)!r}: duplicate thresholds")


@dataclass(frozen=True, kw_only=True)
class RolloutMatchingConfig:
    """``rollout_matching`` section (SPEC §3.6, §3.7, §7.1).

    Fields:
      rollout_backend: ``hf`` (``generate`` with KV cache) | ``vllm`` (colocated, lazy import).
      decode_mode: ``greedy`` | ``beam`` (best beam only; needs ``num_beams`` ≥ 2; greedy needs ``num_beams`` 1).
      max_new_tokens: rollout length cap (int ≥ 1).
      num_beams: beams for ``decode_mode: beam`` (int ≥ 1).
      decode_batch_size: rollout micro-batch (int ≥ 1, left-padded).
      decoding: temperature / top_p / top_k.
      candidate_top_k: GT candidates kept per prediction before Hungarian matching (int ≥ 1).
      maskiou_gate: minimum IoU in [0, 1] for a finite match cost.
      maskiou_resolution: reserved for polygons (int ≥ 1); unused by bbox-only matching.
      fp_cost, fn_cost: dummy-row/column costs of the square assignment matrix (≥ 0).
      vllm: vLLM engine knobs.
      eval_detection: COCO mAP in the eval step.
      coord_decode_mode: geometry decode of ``stage2_rollout_aligned`` (``exp`` | ``st``); two-channel runs use
        ``stage2_ab.coord_decode_mode`` instead.
      pipeline: raw objective pipeline of ``stage2_rollout_aligned`` (validated by ``teacher_forcing``).
    """

    rollout_backend: Literal["hf", "vllm"] = "hf"
    decode_mode: Literal["greedy", "beam"] = "greedy"
    max_new_tokens: int = bounded(512, ge=1)
    num_beams: int = bounded(1, ge=1)
    decode_batch_size: int = bounded(4, ge=1)
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    candidate_top_k: int = bounded(10, ge=1)
    maskiou_gate: float = bounded(0.3, ge=0, le=1)
    maskiou_resolution: int = bounded(256, ge=1)
    fp_cost: float = bounded(1.0, ge=0)
    fn_cost: float = bounded(1.0, ge=0)
    vllm: VllmConfig = field(default_factory=VllmConfig)
    eval_detection: EvalDetectionConfig = field(default_factory=EvalDetectionConfig)
    coord_decode_mode: Literal["exp", "st"] = "exp"
    pipeline: Optional[dict[str, Any]] = None

    def validate(self, path: str) -> None:
        """``decode_mode`` and ``num_beams`` agree."""
        if self.decode_mode == "greedy" and self.num_beams != 1:
            raise ValueError(
                f"{path}.num_beams = {self.num_beams} with {path}.decode_mode = 'greedy': set "
                f"{path}.decode_mode: beam, or num_beams: 1"
            )
        if self.decode_mode == "beam" and self.num_beams < 2:
            raise ValueError(
                f"{path}.num_beams = {self.num_beams} with {path}.decode_mode = 'beam': beam search needs "
                f"num_beams >= 2 (or use decode_mode: greedy)"
            )
