"""Typed, strict configuration of the three coordexp YAML sections (``custom``, ``stage2_ab``, ``rollout_matching``).

Standard library + PyYAML only. Entry points: ``load_yaml_file`` and ``load_coordexp_config``; the generic strict
loader (``build_strict``, ``check_unknown_keys``) is reusable for ms-swift's own top-level keys.
"""

from coordexp_swift.config.custom import (
    DEFAULT_USER_PROMPT,
    LEGACY_TRAINER_VARIANTS,
    TRAINER_VARIANTS,
    VARIANT_STAGE1,
    VARIANT_STAGE2_ROLLOUT_ALIGNED,
    VARIANT_STAGE2_TWO_CHANNEL,
    CoordSoftCEW1Config,
    DataConfig,
    CustomConfig,
    normalize_trainer_variant,
)
from coordexp_swift.config.loader import (
    SECTION_NAMES,
    CoordExpConfig,
    load_coordexp_config,
    load_yaml_file,
    parse_section_value,
)
from coordexp_swift.config.rollout_matching import (
    DecodingConfig,
    EvalDetectionConfig,
    RolloutMatchingConfig,
    VllmConfig,
)
from coordexp_swift.config.stage2_ab import FLAT_OBJECTIVE_KNOBS, ChannelBConfig, ScheduleConfig, Stage2ABConfig
from coordexp_swift.config.strict import build_strict, check_unknown_keys, closest_key, to_jsonable

__all__ = [
    "DEFAULT_USER_PROMPT",
    "FLAT_OBJECTIVE_KNOBS",
    "LEGACY_TRAINER_VARIANTS",
    "SECTION_NAMES",
    "TRAINER_VARIANTS",
    "VARIANT_STAGE1",
    "VARIANT_STAGE2_ROLLOUT_ALIGNED",
    "VARIANT_STAGE2_TWO_CHANNEL",
    "ChannelBConfig",
    "CoordExpConfig",
    "CoordSoftCEW1Config",
    "CustomConfig",
    "DataConfig",
    "DecodingConfig",
    "EvalDetectionConfig",
    "RolloutMatchingConfig",
    "ScheduleConfig",
    "Stage2ABConfig",
    "VllmConfig",
    "build_strict",
    "check_unknown_keys",
    "closest_key",
    "load_coordexp_config",
    "load_yaml_file",
    "normalize_trainer_variant",
    "parse_section_value",
    "to_jsonable",
]
