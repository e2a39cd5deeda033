"""The ``custom`` section: trainer variant, prompts, CoordJSON field order and the Stage-1 coord loss (SPEC §0, §1.3,
§1.4, §2.1). Defaults live here and nowhere else."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal, Mapping, Optional

from coordexp_swift.config.strict import bounded
from coordexp_swift.config.text_literals import find_forbidden_literal, find_lone_surrogate

__all__ = [
    "DEFAULT_USER_PROMPT",
    "LEGACY_TRAINER_VARIANTS",
    "TRAINER_VARIANTS",
    "VARIANT_STAGE1",
    "VARIANT_STAGE2_ROLLOUT_ALIGNED",
    "VARIANT_STAGE2_TWO_CHANNEL",
    "CoordSoftCEW1Config",
    "CustomConfig",
    "DataConfig",
    "normalize_trainer_variant",
]

VARIANT_STAGE1 = "stage1"
VARIANT_STAGE2_TWO_CHANNEL = "stage2_two_channel"
VARIANT_STAGE2_ROLLOUT_ALIGNED = "stage2_rollout_aligned"

#: Accepted authored values of ``custom.trainer_variant`` (omitting the key selects Stage-1).
TRAINER_VARIANTS: tuple[str, ...] = (VARIANT_STAGE2_TWO_CHANNEL, VARIANT_STAGE2_ROLLOUT_ALIGNED)

#: Removed variant names -> their replacement (SPEC §0, seed 002 0.3).
LEGACY_TRAINER_VARIANTS: Mapping[str, str] = {
    "stage2_ab_training": VARIANT_STAGE2_TWO_CHANNEL,
    "rollout_matching_sft": VARIANT_STAGE2_ROLLOUT_ALIGNED,
}

_VARIANT_HINT = "omit custom.trainer_variant for Stage-1"

#: Default user prompt (SPEC §1.4). Neutral about the field order so it fits both ``object_field_order`` values.
DEFAULT_USER_PROMPT = (
    "Detect every object in the image. Answer with JSON only, in the form "
    '{"objects": [{"desc": ..., "bbox_2d": [x1, y1, x2, y2]}, ...]}: one record per object with a short text '
    '"desc" and a "bbox_2d" of four coordinate tokens <|coord_k|> (k from 0 to 999, relative to the image size, '
    "top-left corner first), objects ordered top to bottom, then left to right."
)


def normalize_trainer_variant(value: object, path: str = "custom.trainer_variant") -> str:
    """Map an authored ``custom.trainer_variant`` value to ``"stage1"`` (``None``) or the variant name.

    Raises ``ValueError`` naming ``path``: legacy names recommend their replacement; other values list the accepted
    ones. Used by the config loader and by the trainer dispatcher.
    """
    if value is None:
        return VARIANT_STAGE1
    if isinstance(value, str) and value in LEGACY_TRAINER_VARIANTS:
        raise ValueError(
            f"{path}: {value!r} is a legacy name and is no longer accepted; "
            f"use {LEGACY_TRAINER_VARIANTS[value]!r}"
        )
    if isinstance(value, str) and value in TRAINER_VARIANTS:
        return value
    accepted = ", ".join(repr(v) for v in TRAINER_VARIANTS)
    raise ValueError(f"{path}: invalid value {value!r}; accepted values: {accepted} ({_VARIANT_HINT})")


_COORD_WEIGHT_KEYS = ("ce_weight", "soft_ce_weight", "w1_weight", "gate_weight", "text_gate_weight")


@dataclass(frozen=True, kw_only=True)
class CoordSoftCEW1Config:
    """``custom.coord_soft_ce_w1`` (SPEC §2.1): Stage-1 coord-gated softCE + W1 (+ gates).

    Fields:
      enabled: turn the coord loss on; when off, coord tokens stay in the base CE (plain SFT).
      ce_weight: λ_ce, hard CE on the coord-gated logits (≥ 0).
      soft_ce_weight: λ_soft, soft-label CE against the Gaussian target (≥ 0).
      w1_weight: λ_W1, 1-D Wasserstein distance between predicted and target CDFs over bins, scaled by 1/999 (≥ 0).
      gate_weight: λ_gate, −log p(coord vocab) at coord positions (≥ 0).
      text_gate_weight: λ_tg, −log(1 − p(coord vocab)) at supervised text positions (≥ 0).
      temperature: τ > 0 applied to the coord-slice and full logits.
      target_sigma: σ > 0 of the Gaussian target, in bins.
      target_truncate: ``None`` or an int ≥ 0: kernel radius in bins (mass beyond is zeroed before renormalising).

    Enabled with every weight 0 is rejected (it would train nothing on coord tokens while removing them from CE).
    """

    enabled: bool = False
    ce_weight: float = bounded(0.0, ge=0, doc="λ_ce")
    soft_ce_weight: float = bounded(1.0, ge=0, doc="λ_soft")
    w1_weight: float = bounded(1.0, ge=0, doc="λ_W1")
    gate_weight: float = bounded(1.0, ge=0, doc="λ_gate")
    text_gate_weight: float = bounded(0.0, ge=0, doc="λ_tg")
    temperature: float = bounded(1.0, gt=0, doc="τ")
    target_sigma: float = bounded(2.0, gt=0, doc="σ in bins")
    target_truncate: Optional[int] = bounded(None, ge=0, doc="kernel radius in bins")

    def validate(self, path: str) -> None:
        """Cross-field check: enabled requires at least one positive weight."""
        if self.enabled and all(getattr(self, k) == 0 for k in _COORD_WEIGHT_KEYS):
            keys = ", ".join(f"{path}.{k}" for k in _COORD_WEIGHT_KEYS)
            raise ValueError(
                f"{path}.enabled is true but every weight is 0 ({keys}); set at least one weight > 0 "
                f"or set {path}.enabled: false"
            )


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """``custom.data``: what happens to a sample that cannot be trained on as written.

    Fields:
      on_bad_sample: ``fail`` (default): a record whose image file is missing, a sample whose template encoding
        is longer than ms-swift's ``max_length``, or one the template cannot encode, stops the run before training,
        naming file, line and reason. ``skip``: such samples are left out before training, each logged with file,
        line and reason, counted per reason in one INFO line, in ``<output_dir>/coordexp_skipped.jsonl`` and in
        ``<output_dir>/coordexp_config.json`` (``data_skipped``). Invalid records (SPEC §1.5) always fail.
    """

    on_bad_sample: Literal["fail", "skip"] = "fail"


@dataclass(frozen=True, kw_only=True)
class CustomConfig:
    """``custom`` section (SPEC §0, §1.3, §1.4, §2.1).

    Fields:
      trainer_variant: ``None`` (Stage-1) | ``stage2_two_channel`` | ``stage2_rollout_aligned``.
      object_field_order: ``desc_first`` | ``geometry_first``; the rendered CoordJSON and the rollout parser use it.
      user_prompt: user text placed after the image (non-empty).
      system_prompt: optional system message (``None`` → no system turn).
      coord_soft_ce_w1: Stage-1 coord loss; also the source of Stage-2 softCE/W1 defaults (SPEC §6.3).
      data: bad-sample policy (``on_bad_sample: fail | skip``).

    Prompts may not contain special-token literals or ms-swift template tags (``text_literals``) nor lone
    surrogates.
    """

    LEGACY_KEYS: ClassVar[Mapping[str, str]] = {
        "coord_loss": "use 'custom.coord_soft_ce_w1' instead (SPEC §2.1)",
        "coord_expectation_metrics": "use 'custom.coord_soft_ce_w1' instead (SPEC §2.1)",
    }

    trainer_variant: Optional[Literal["stage2_two_channel", "stage2_rollout_aligned"]] = bounded(
        None, legacy_values=LEGACY_TRAINER_VARIANTS, hint=_VARIANT_HINT
    )
    object_field_order: Literal["desc_first", "geometry_first"] = "desc_first"
    user_prompt: str = DEFAULT_USER_PROMPT
    system_prompt: Optional[str] = None
    coord_soft_ce_w1: CoordSoftCEW1Config = field(default_factory=CoordSoftCEW1Config)
    data: DataConfig = field(default_factory=DataConfig)

    @property
    def variant(self) -> str:
        """``"stage1"`` | ``"stage2_two_channel"`` | ``"stage2_rollout_aligned"``."""
        return normalize_trainer_variant(self.trainer_variant)

    def validate(self, path: str) -> None:
        """Prompts must carry text."""
        if not self.user_prompt.strip():
            raise ValueError(f"{path}.user_prompt: must be a non-empty string (omit it for the default prompt)")
        if self.system_prompt is not None and not self.system_prompt.strip():
            raise ValueError(f"{path}.system_prompt: must be non-empty when set (omit it for no system turn)")
        for key in ("user_prompt", "system_prompt"):
            text = getattr(self, key)
            if text is None:
                continue
            lit = find_forbidden_literal(text)
            if lit is not None:
                raise ValueError(f"{path}.{key}: contains the special-token / template-tag literal {lit!r}, which "
                                 f"the tokenizer or ms-swift's template would not keep as text; remove it")
            at = find_lone_surrogate(text)
            if at is not None:
                raise ValueError(f"{path}.{key}: lone surrogate {text[at]!r} at character {at} (not encodable "
                                 f"as UTF-8); fix the string")
