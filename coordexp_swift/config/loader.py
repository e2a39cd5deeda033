"""Load and cross-validate the three coordexp sections (SPEC §0, §6.2) into one frozen ``CoordExpConfig``.

``load_coordexp_config(sections)`` takes ``{"custom": ..., "stage2_ab": ..., "rollout_matching": ...}`` (each
optional; a mapping, a JSON string — ``swift sft`` passes dict-valued YAML keys as JSON — or ``None`` = absent),
builds each section strictly (``strict.build_strict``), then applies, in order:

1. variant section rules (SPEC §0): Stage-1 rejects ``stage2_ab`` / ``rollout_matching``; both Stage-2 variants
   require ``rollout_matching``; ``stage2_two_channel`` requires ``stage2_ab``; ``stage2_rollout_aligned`` rejects
   ``stage2_ab`` (pointing ``stage2_ab.pipeline`` / ``stage2_ab.coord_decode_mode`` at their ``rollout_matching``
   twins);
2. cross-variant keys (SPEC §6.2): ``stage2_two_channel`` rejects authored ``rollout_matching.pipeline`` /
   ``rollout_matching.coord_decode_mode``;
3. flat-knob guardrails (SPEC §6.2): with a pipeline present, authored flat objective knobs fail with
   "move it into module config". ST keys (``coord_ctx_embed_mode``, ``coord_decode_mode``) stay allowed.

Every error is a ``ValueError`` whose message contains the full dotted key (prefixed with ``source``, the config
file path, when given).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from coordexp_swift.config.custom import (
    VARIANT_STAGE1,
    VARIANT_STAGE2_ROLLOUT_ALIGNED,
    VARIANT_STAGE2_TWO_CHANNEL,
    CustomConfig,
)
from coordexp_swift.config.rollout_matching import RolloutMatchingConfig
from coordexp_swift.config.stage2_ab import FLAT_OBJECTIVE_KNOBS, Stage2ABConfig
from coordexp_swift.config.strict import build_strict, check_unknown_keys, to_jsonable

__all__ = [
    "COORD_SOFT_CE_W1_MODULE_KEYS",
    "SECTION_NAMES",
    "CoordExpConfig",
    "load_coordexp_config",
    "load_yaml_file",
    "parse_section_value",
]

#: The coordexp-owned top-level YAML keys; every other top-level key belongs to ms-swift.
SECTION_NAMES: tuple[str, ...] = ("custom", "stage2_ab", "rollout_matching")

#: Where each ``custom.coord_soft_ce_w1`` key lives in module config once a pipeline is authored.
COORD_SOFT_CE_W1_MODULE_KEYS: Mapping[str, str] = {
    "enabled": "list coord_reg in pipeline.objective (set enabled on the entry)",
    "ce_weight": "coord_reg.config.coord_ce_weight",
    "soft_ce_weight": "coord_reg.config.soft_ce_weight",
    "w1_weight": "coord_reg.config.w1_weight",
    "gate_weight": "coord_reg.config.coord_gate_weight",
    "text_gate_weight": "coord_reg.config.text_gate_weight",
    "temperature": "coord_reg.config.temperature",
    "target_sigma": "coord_reg.config.target_sigma",
    "target_truncate": "coord_reg.config.target_truncate",
}

_SOFT_CE_PREFIX = "custom.coord_soft_ce_w1"


@dataclass(frozen=True, kw_only=True)
class CoordExpConfig:
    """The resolved, validated coordexp configuration of one run.

    Fields:
      custom: always present (defaults when the section is omitted).
      stage2_ab: ``None`` unless the variant is ``stage2_two_channel``.
      rollout_matching: ``None`` for Stage-1; present for both Stage-2 variants.
      authored: dotted keys present in the input (sections, nested sections and leaves; not keys inside the raw
        ``pipeline`` mappings), whether or not equal to the default.
    """

    custom: CustomConfig
    stage2_ab: Stage2ABConfig | None
    rollout_matching: RolloutMatchingConfig | None
    authored: frozenset[str]

    @property
    def variant(self) -> str:
        """``"stage1"`` | ``"stage2_two_channel"`` | ``"stage2_rollout_aligned"``."""
        return self.custom.variant

    def is_authored(self, dotted_key: str) -> bool:
        """Whether ``dotted_key`` (e.g. ``"stage2_ab.desc_ce_weight"``) was present in the input."""
        return dotted_key in self.authored

    def inert_keys(self) -> tuple[str, ...]:
        """Dotted keys that do not take effect in this run (SPEC §6.2): with a pipeline, the flat objective knobs
        and ``custom.coord_soft_ce_w1``; for ``stage2_two_channel``, ``rollout_matching.{pipeline,
        coord_decode_mode}``. Sorted."""
        inert: list[str] = []
        if self.variant == VARIANT_STAGE2_TWO_CHANNEL:
            inert += list(_CROSS_VARIANT_KEYS[VARIANT_STAGE2_TWO_CHANNEL])
        if self.stage2_ab is not None and self.stage2_ab.pipeline is not None:
            inert += [f"stage2_ab.{k}" for k in FLAT_OBJECTIVE_KNOBS] + [_SOFT_CE_PREFIX]
        if self.rollout_matching is not None and self.rollout_matching.pipeline is not None:
            inert.append(_SOFT_CE_PREFIX)
        return tuple(sorted(set(inert)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready resolved config: every effective key with its value (defaults included; absent sections are
        ``None``; ``inert_keys()`` left out), plus ``variant`` and the sorted ``authored`` keys.
        ``{k: d[k] for k in SECTION_NAMES}`` loads back to an equal config."""
        out: dict[str, Any] = {
            "variant": self.variant,
            "custom": to_jsonable(self.custom),
            "stage2_ab": to_jsonable(self.stage2_ab),
            "rollout_matching": to_jsonable(self.rollout_matching),
            "authored": sorted(self.authored),
        }
        for key in self.inert_keys():
            *parents, leaf = key.split(".")
            node = out
            for part in parents:
                node = node[part]
            del node[leaf]
        return out


def parse_section_value(name: str, value: Any) -> Mapping[str, Any] | None:
    """A section's raw value → mapping (``None`` = absent). Accepts a mapping, ``None`` or a JSON-object string."""
    if value is None or isinstance(value, Mapping):
        return value
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{name}: expected a mapping; got a string that is not valid JSON ({exc})") from None
        if parsed is None or isinstance(parsed, Mapping):
            return parsed
        raise ValueError(f"{name}: expected a mapping, got JSON {type(parsed).__name__} {parsed!r}")
    raise ValueError(f"{name}: expected a mapping, got {type(value).__name__} {value!r}")


# --- variant section rules (SPEC §0) --------------------------------------------------------------------------

_STAGE2_VARIANTS = (VARIANT_STAGE2_TWO_CHANNEL, VARIANT_STAGE2_ROLLOUT_ALIGNED)


def _rollout_aligned_stage2_ab_error(section: Mapping[str, Any]) -> str:
    if "pipeline" in section:
        return ("stage2_ab.pipeline is not read by custom.trainer_variant 'stage2_rollout_aligned': "
                "use rollout_matching.pipeline (and remove the stage2_ab section)")
    if "coord_decode_mode" in section:
        return ("stage2_ab.coord_decode_mode is not read by custom.trainer_variant 'stage2_rollout_aligned': "
                "use rollout_matching.coord_decode_mode (and remove the stage2_ab section)")
    return ("stage2_ab: this section belongs to custom.trainer_variant 'stage2_two_channel'; "
            "'stage2_rollout_aligned' reads only rollout_matching — remove the stage2_ab section")


@dataclass(frozen=True)
class _SectionRule:
    """Per-variant presence rules: required sections, and forbidden ones with a message builder."""

    required: tuple[str, ...]
    forbidden: Mapping[str, Callable[[Mapping[str, Any]], str]]


def _stage1_forbids(name: str) -> Callable[[Mapping[str, Any]], str]:
    def message(_: Mapping[str, Any]) -> str:
        return (f"{name}: Stage-1 (custom.trainer_variant omitted) does not accept the {name} section; remove it, "
                f"or set custom.trainer_variant to one of: {', '.join(_STAGE2_VARIANTS)}")
    return message


_SECTION_RULES: Mapping[str, _SectionRule] = {
    VARIANT_STAGE1: _SectionRule(
        required=(),
        forbidden={"stage2_ab": _stage1_forbids("stage2_ab"), "rollout_matching": _stage1_forbids("rollout_matching")},
    ),
    VARIANT_STAGE2_TWO_CHANNEL: _SectionRule(required=("stage2_ab", "rollout_matching"), forbidden={}),
    VARIANT_STAGE2_ROLLOUT_ALIGNED: _SectionRule(
        required=("rollout_matching",), forbidden={"stage2_ab": _rollout_aligned_stage2_ab_error}
    ),
}

_REQUIRED_HINTS: Mapping[str, str] = {
    "stage2_ab": "add a stage2_ab section with at least stage2_ab.schedule (b_ratio or pattern)",
    "rollout_matching": "add a rollout_matching section ({} takes every default)",
}


def _check_sections(variant: str, raw: Mapping[str, Mapping[str, Any] | None]) -> None:
    rule = _SECTION_RULES[variant]
    for name in SECTION_NAMES:
        section = raw.get(name)
        if section is not None and name in rule.forbidden:
            raise ValueError(rule.forbidden[name](section))
        if section is None and name in rule.required:
            raise ValueError(
                f"{name}: section is required for custom.trainer_variant {variant!r}; {_REQUIRED_HINTS[name]}"
            )


# --- cross-variant keys and flat-knob guardrails (SPEC §6.2) --------------------------------------------------

_CROSS_VARIANT_KEYS: Mapping[str, Mapping[str, str]] = {
    VARIANT_STAGE2_TWO_CHANNEL: {
        "rollout_matching.pipeline": "use stage2_ab.pipeline",
        "rollout_matching.coord_decode_mode": "use stage2_ab.coord_decode_mode",
    },
}


def _check_cross_variant_keys(variant: str, authored: frozenset[str]) -> None:
    for key, fix in _CROSS_VARIANT_KEYS.get(variant, {}).items():
        if key in authored:
            raise ValueError(f"{key} is not read by custom.trainer_variant {variant!r}: {fix}")


def _soft_ce_w1_knobs(authored: frozenset[str]) -> dict[str, str]:
    """Authored ``custom.coord_soft_ce_w1.*`` keys (else the section key, if authored empty) → module-config home."""
    out = {key: COORD_SOFT_CE_W1_MODULE_KEYS[key[len(_SOFT_CE_PREFIX) + 1:]]
           for key in sorted(authored) if key.startswith(_SOFT_CE_PREFIX + ".")}
    if not out and _SOFT_CE_PREFIX in authored:  # authored as an empty mapping: still an authored flat knob section
        out[_SOFT_CE_PREFIX] = "coord_reg.config (soft_ce_weight, w1_weight, temperature, target_sigma, ...)"
    return out


def _stage2_ab_flat_knobs(authored: frozenset[str]) -> dict[str, str]:
    return {f"stage2_ab.{k}": v for k, v in FLAT_OBJECTIVE_KNOBS.items() if f"stage2_ab.{k}" in authored}


def _raise_flat_knobs(pipeline_key: str, knobs: Mapping[str, str]) -> None:
    if not knobs:
        return
    keys = sorted(knobs)
    first = keys[0]
    msg = (f"{first} is a flat objective knob but {pipeline_key} is present: move it into module config "
           f"({pipeline_key} → {knobs[first]}) and delete {first}")
    if len(keys) > 1:
        msg += f"; also authored: {', '.join(keys[1:])}"
    raise ValueError(msg)


def _check_flat_knob_guardrails(cfg: CoordExpConfig) -> None:
    if cfg.stage2_ab is not None and cfg.stage2_ab.pipeline is not None:
        knobs = {**_stage2_ab_flat_knobs(cfg.authored), **_soft_ce_w1_knobs(cfg.authored)}
        _raise_flat_knobs("stage2_ab.pipeline", knobs)
    if cfg.rollout_matching is not None and cfg.rollout_matching.pipeline is not None:
        _raise_flat_knobs("rollout_matching.pipeline", _soft_ce_w1_knobs(cfg.authored))


# --- entry points ---------------------------------------------------------------------------------------------

def load_coordexp_config(sections: Mapping[str, Any], *, source: str | None = None) -> CoordExpConfig:
    """Build and validate the coordexp config from its sections; see the module docstring.

    Args:
      sections: mapping with (a subset of) ``custom``, ``stage2_ab``, ``rollout_matching``; each value a mapping,
        a JSON-object string or ``None`` (absent). Other keys are rejected (closest-key suggestion).
      source: the config file path, prefixed to error messages.
    Raises:
      ValueError: any config error; the message contains the dotted key.
    """
    try:
        return _load(sections)
    except ValueError as exc:
        if source is None:
            raise
        raise ValueError(f"{source}: {exc}") from exc


def _load(sections: Mapping[str, Any]) -> CoordExpConfig:
    if not isinstance(sections, Mapping):
        raise ValueError(f"coordexp config: expected a mapping of sections, got {type(sections).__name__}")
    check_unknown_keys(sections.keys(), SECTION_NAMES, "")
    raw = {name: parse_section_value(name, sections.get(name)) for name in SECTION_NAMES}
    authored: set[str] = {name for name in SECTION_NAMES if raw[name] is not None}

    custom = build_strict(CustomConfig, raw["custom"] or {}, "custom", authored)
    variant = custom.variant
    _check_sections(variant, raw)
    stage2_ab = None if raw["stage2_ab"] is None else build_strict(
        Stage2ABConfig, raw["stage2_ab"], "stage2_ab", authored)
    rollout = None if raw["rollout_matching"] is None else build_strict(
        RolloutMatchingConfig, raw["rollout_matching"], "rollout_matching", authored)

    cfg = CoordExpConfig(custom=custom, stage2_ab=stage2_ab, rollout_matching=rollout, authored=frozenset(authored))
    _check_cross_variant_keys(variant, cfg.authored)
    _check_flat_knob_guardrails(cfg)
    return cfg


class _StrictSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects duplicate mapping keys (PyYAML silently keeps the last one)."""


def _construct_mapping_no_duplicates(loader: _StrictSafeLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    loader.flatten_mapping(node)
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, (str, int, float, bool)) and key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {seen[key].line + 1})", mark)
        seen[key] = key_node.start_mark
    return loader.construct_mapping(node, deep=deep)


_StrictSafeLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping_no_duplicates)


def describe_bad_utf8(raw: bytes, exc: UnicodeDecodeError) -> str:
    """``"not valid UTF-8: byte 0xff at line L, column C"`` (1-based) for a failed ``raw.decode("utf-8")``."""
    pos = exc.start
    line = raw.count(b"\n", 0, pos) + 1
    col = pos - (raw.rfind(b"\n", 0, pos) + 1) + 1
    return (f"not valid UTF-8: byte 0x{raw[pos]:02x} at line {line}, column {col} ({exc.reason}); "
            f"save the file as UTF-8")


def load_yaml_file(path: str) -> dict[str, Any]:
    """Read a run YAML (safe loader, duplicate keys rejected) and return its top-level mapping.

    Raises ``ValueError`` naming ``path`` (and line/column from PyYAML) on unreadable files, bytes that are not
    UTF-8 (line and column of the first bad byte; a UTF-8 BOM is accepted), YAML syntax errors, duplicate keys and
    a top level that is not a mapping.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read config file ({exc.strerror or exc})") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: {describe_bad_utf8(raw, exc)}") from None
    try:
        data = yaml.load(text, Loader=_StrictSafeLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: invalid YAML: {exc}") from exc
    if not isinstance(data, dict):
        got = "an empty document" if data is None else f"{type(data).__name__}"
        raise ValueError(f"{path}: the top level must be a mapping of keys, got {got}")
    return data
