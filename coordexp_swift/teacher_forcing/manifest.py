"""Objective pipeline config (SPEC §6): strict parsing of ``stage2_ab.pipeline`` / ``rollout_matching.pipeline``,
the §6.3 default manifest, the §6.4 identity / canonical JSON / SHA-256 checksum, and the manifest file + init log.

Identity = ``{objective, diagnostics, extra}``; each entry ``{name, enabled, weight, channels, config}`` with the
config fully resolved. Canonical JSON: keys sorted at every level, list order kept, separators ``(",", ":")``,
ASCII-escaped, finite floats only, ``-0.0 → 0.0``, Python float repr. Checksum = lowercase hex SHA-256 of its UTF-8
bytes. Run context (config path, run name, seed) is logged beside it, never hashed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Optional

from coordexp_swift.config.custom import (
    VARIANT_STAGE1,
    VARIANT_STAGE2_ROLLOUT_ALIGNED,
    VARIANT_STAGE2_TWO_CHANNEL,
    CoordSoftCEW1Config,
)
from coordexp_swift.config.strict import build_strict, check_unknown_keys, to_jsonable
from coordexp_swift.teacher_forcing.registry import ModuleSpec, available_names, module_registry

__all__ = [
    "CHANNELS",
    "MANIFEST_FILENAME",
    "PIPELINE_KEYS",
    "ENTRY_KEYS",
    "PipelineEntry",
    "PipelineManifest",
    "canonical_json",
    "default_manifest",
    "describe_pipeline",
    "parse_pipeline",
    "pipeline_path",
    "resolve_pipeline",
    "stage1_manifest",
    "write_manifest",
]

logger = logging.getLogger(__name__)

MANIFEST_FILENAME = "pipeline_manifest.json"
CHANNELS: tuple[str, ...] = ("A", "B")
PIPELINE_KEYS: tuple[str, ...] = ("objective", "diagnostics")
ENTRY_KEYS: tuple[str, ...] = ("name", "enabled", "weight", "channels", "config")
_PIPELINE_PATH = {
    VARIANT_STAGE2_TWO_CHANNEL: "stage2_ab.pipeline",
    VARIANT_STAGE2_ROLLOUT_ALIGNED: "rollout_matching.pipeline",
}


def pipeline_path(variant: str) -> str:
    """Dotted key of the pipeline mapping of a Stage-2 ``variant`` (Stage-1 has none; ``ValueError``)."""
    try:
        return _PIPELINE_PATH[variant]
    except KeyError:
        raise ValueError(f"custom.trainer_variant {variant!r} has no objective pipeline key (Stage-2 only: "
                         f"{', '.join(_PIPELINE_PATH)})") from None


@dataclass(frozen=True)
class PipelineEntry:
    """One resolved pipeline entry: ``config`` is the module's frozen config dataclass (all keys resolved)."""

    name: str
    enabled: bool
    weight: float
    channels: tuple[str, ...]
    config: Any

    def identity(self) -> dict[str, Any]:
        """The §6.4 normalised entry."""
        return {"name": self.name, "enabled": self.enabled, "weight": float(self.weight),
                "channels": [c for c in CHANNELS if c in self.channels], "config": to_jsonable(self.config)}


@dataclass(frozen=True)
class PipelineManifest:
    """Resolved pipeline of one run: ``variant``, ordered ``objective`` / ``diagnostics`` entries, ``extra`` (the
    variant and ST keys, §6.4) and ``authored`` (False = §6.3 default)."""

    variant: str
    objective: tuple[PipelineEntry, ...]
    diagnostics: tuple[PipelineEntry, ...]
    extra: Mapping[str, Any]
    authored: bool = False

    def identity(self) -> dict[str, Any]:
        """``{objective, diagnostics, extra}`` as plain data."""
        return {"objective": [e.identity() for e in self.objective],
                "diagnostics": [e.identity() for e in self.diagnostics], "extra": dict(self.extra)}

    def canonical_json(self) -> str:
        """The canonical JSON of :meth:`identity` (no trailing newline)."""
        return canonical_json(self.identity())

    @property
    def checksum(self) -> str:
        """Lowercase hex SHA-256 of the canonical JSON's UTF-8 bytes."""
        return hashlib.sha256(self.canonical_json().encode("utf-8")).hexdigest()

    def entry(self, name: str) -> Optional[PipelineEntry]:
        """The entry called ``name`` in either list, or ``None``."""
        for e in self.objective + self.diagnostics:
            if e.name == name:
                return e
        return None

    def module_lines(self) -> list[str]:
        """One human-readable line per entry, list order."""
        lines = []
        for kind, entries in (("objective", self.objective), ("diagnostics", self.diagnostics)):
            for e in entries:
                cfg = canonical_json(to_jsonable(e.config))
                lines.append(f"{kind}: {e.name} enabled={str(e.enabled).lower()} weight={float(e.weight)!r} "
                             f"channels={','.join(e.channels)} config={cfg}")
        return lines


def _normalise(value: Any, path: str) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"pipeline identity: {path} = {value!r} is not a finite float")
        return 0.0 if value == 0.0 else value
    if isinstance(value, Mapping):
        return {str(k): _normalise(v, f"{path}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normalise(v, f"{path}[{i}]") for i, v in enumerate(value)]
    raise ValueError(f"pipeline identity: {path} has unsupported type {type(value).__name__}")


def canonical_json(obj: Any) -> str:
    """SPEC §6.4 canonical JSON (sorted keys, ``(",", ":")``, ASCII, finite floats, ``-0.0 → 0.0``)."""
    return json.dumps(_normalise(obj, "identity"), sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False)


# --- strict parsing (§6.1) ------------------------------------------------------------------------------------

def _parse_entry(raw: Any, path: str, kind: str, variant: str, registry: Mapping[str, ModuleSpec]) -> PipelineEntry:
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path}: expected a mapping with keys {', '.join(ENTRY_KEYS)}, got "
                         f"{type(raw).__name__} {raw!r}")
    check_unknown_keys(raw.keys(), ENTRY_KEYS, path)
    if "name" not in raw:
        raise ValueError(f"{path}.name: missing required key (one of: {', '.join(available_names(kind, registry))})")
    name = raw["name"]
    if not isinstance(name, str):
        raise ValueError(f"{path}.name: expected str, got {type(name).__name__} {name!r}")
    spec = registry.get(name)
    if spec is None:
        raise ValueError(f"{path}.name: unknown {kind} module {name!r}; available {kind} modules: "
                         f"{', '.join(available_names(kind, registry))}")
    if spec.kind != kind:
        raise ValueError(f"{path}.name: {name!r} is a {spec.kind} module and cannot be listed under {kind}; move it "
                         f"to the {spec.kind} list (available {kind} modules: "
                         f"{', '.join(available_names(kind, registry))})")
    cfg_cls = spec.config_class(variant)
    if cfg_cls is None:
        raise ValueError(f"{path}.name: module {name!r} does not support trainer variant {variant!r} "
                         f"(supported: {', '.join(sorted(spec.config_classes))})")
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ValueError(f"{path}.enabled: expected bool (true/false), got {type(enabled).__name__} {enabled!r}")
    weight = raw.get("weight", 1.0)
    if isinstance(weight, int) and not isinstance(weight, bool) and abs(weight) > 10**300:  # float() would overflow
        raise ValueError(f"{path}.weight: expected a finite float >= 0, got an int with {len(str(weight))} digits")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(float(weight)) \
            or float(weight) < 0:
        raise ValueError(f"{path}.weight: expected a finite float >= 0, got {type(weight).__name__} {weight!r}")
    channels = _parse_channels(raw.get("channels", list(CHANNELS)), f"{path}.channels", variant, spec)
    config_raw = raw.get("config", {})
    if config_raw is None or not isinstance(config_raw, Mapping):
        raise ValueError(f"{path}.config: expected a mapping (allowed keys: "
                         f"{', '.join(f.name for f in dataclasses.fields(cfg_cls)) or '(none)'}), got "
                         f"{type(config_raw).__name__} {config_raw!r}")
    config = build_strict(cfg_cls, config_raw, f"{path}.config")
    return PipelineEntry(name=name, enabled=enabled, weight=float(weight), channels=channels, config=config)


def _parse_channels(raw: Any, path: str, variant: str, spec: ModuleSpec) -> tuple[str, ...]:
    if not isinstance(raw, (list, tuple)) or not raw:
        raise ValueError(f"{path}: expected a non-empty list over {list(CHANNELS)}, got {raw!r}")
    for i, c in enumerate(raw):
        if c not in CHANNELS:
            raise ValueError(f"{path}[{i}]: invalid channel {c!r}; accepted values: {', '.join(CHANNELS)}")
        if c not in spec.channels:
            raise ValueError(f"{path}[{i}]: module {spec.name!r} cannot run on channel {c!r} (allowed: "
                             f"{', '.join(spec.channels)})")
    if len(set(raw)) != len(raw):
        raise ValueError(f"{path}: duplicate channel in {list(raw)!r}; list each of A, B at most once")
    if variant == VARIANT_STAGE2_ROLLOUT_ALIGNED and "B" not in raw:
        raise ValueError(f"{path}: {list(raw)!r} must include 'B' (stage2_rollout_aligned runs every module as "
                         f"channel B)")
    return tuple(c for c in CHANNELS if c in raw)


def parse_pipeline(raw: Any, variant: str, extra: Mapping[str, Any], *, path: Optional[str] = None,
                   registry: Optional[Mapping[str, ModuleSpec]] = None) -> PipelineManifest:
    """Strictly parse an authored pipeline mapping (§6.1) into a manifest; ``ValueError`` names the dotted key."""
    path = path or pipeline_path(variant)
    reg = module_registry() if registry is None else registry
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path}: expected a mapping with keys objective (non-empty list) and diagnostics (list), "
                         f"got {type(raw).__name__} {raw!r}")
    check_unknown_keys(raw.keys(), PIPELINE_KEYS, path)
    if "objective" not in raw:
        raise ValueError(f"{path}.objective: missing required key (a non-empty list, e.g. "
                         f"[{{name: token_ce}}, {{name: bbox_geo}}, {{name: coord_reg}}])")
    lists: dict[str, tuple[PipelineEntry, ...]] = {}
    for kind in PIPELINE_KEYS:
        items = raw.get(kind, [] if kind == "diagnostics" else None)
        if not isinstance(items, (list, tuple)):
            raise ValueError(f"{path}.{kind}: expected a list, got {type(items).__name__} {items!r}")
        if kind == "objective" and not items:
            raise ValueError(f"{path}.objective: must be a non-empty list of modules "
                             f"({', '.join(available_names('objective', reg))})")
        entries = tuple(_parse_entry(item, f"{path}.{kind}[{i}]", kind, variant, reg) for i, item in enumerate(items))
        seen: dict[str, int] = {}
        for i, e in enumerate(entries):
            if e.name in seen:
                raise ValueError(f"{path}.{kind}[{i}].name: duplicate module {e.name!r} (already listed at "
                                 f"{path}.{kind}[{seen[e.name]}]); list each module once")
            seen[e.name] = i
        lists[kind] = entries
    return PipelineManifest(variant=variant, objective=lists["objective"], diagnostics=lists["diagnostics"],
                            extra=dict(extra), authored=True)


# --- default manifest (§6.3) ------------------------------------------------------------------------------------

def _entry(name: str, config: Any) -> PipelineEntry:
    return PipelineEntry(name=name, enabled=True, weight=1.0, channels=CHANNELS, config=config)


def _config(name: str, variant: str, values: Mapping[str, Any], source: Optional[str] = None) -> Any:
    """``name``'s config for ``variant`` from ``values``; errors name ``source`` (default: the Stage-2 default)."""
    cls = module_registry()[name].config_class(variant)
    return build_strict(cls, dict(values), source or f"{pipeline_path(variant)}.<default>.{name}.config")


def _two_channel_default(cfg: Any) -> list[PipelineEntry]:
    s, soft = cfg.stage2_ab, cfg.custom.coord_soft_ce_w1
    v = VARIANT_STAGE2_TWO_CHANNEL
    token_ce = {"desc_ce_weight": s.desc_ce_weight, "rollout_fn_desc_weight": s.desc_ce_weight,
                "self_context_struct_ce_weight": s.fmt_struct_ce_weight,
                "rollout_matched_prefix_struct_weight": 1.0,
                "rollout_drop_invalid_struct_ce_multiplier": s.channel_b.drop_invalid_struct_ce_multiplier}
    bbox = {"smoothl1_weight": s.bbox_smoothl1_weight, "ciou_weight": s.bbox_ciou_weight,
            "l1_weight": 0.0, "giou_weight": 0.0}
    reg: dict[str, Any] = {k: getattr(s, k) for k in (
        "coord_ce_weight", "coord_el1_weight", "coord_ehuber_weight", "coord_entropy_weight", "coord_gate_weight",
        "text_gate_weight", "coord_huber_delta")}
    if soft.enabled:
        reg.update(soft_ce_weight=soft.soft_ce_weight, w1_weight=soft.w1_weight, temperature=soft.temperature,
                   target_sigma=soft.target_sigma, target_truncate=soft.target_truncate,
                   self_context_soft_ce_weight=soft.soft_ce_weight)
    else:
        reg.update(soft_ce_weight=0.0, w1_weight=0.0, self_context_soft_ce_weight=0.05, temperature=1.0,
                   target_sigma=2.0, target_truncate=None)
    return [_entry("token_ce", _config("token_ce", v, token_ce)), _entry("bbox_geo", _config("bbox_geo", v, bbox)),
            _entry("coord_reg", _config("coord_reg", v, reg))]


def _rollout_aligned_default(cfg: Any) -> list[PipelineEntry]:
    soft = cfg.custom.coord_soft_ce_w1
    v = VARIANT_STAGE2_ROLLOUT_ALIGNED
    if soft.enabled:
        reg = {"coord_ce_weight": soft.ce_weight, "coord_gate_weight": soft.gate_weight,
               "soft_ce_weight": soft.soft_ce_weight, "w1_weight": soft.w1_weight, "text_gate_weight": 0.0,
               "temperature": soft.temperature, "target_sigma": soft.target_sigma,
               "target_truncate": soft.target_truncate}
    else:
        reg = {"coord_ce_weight": 0.0, "coord_gate_weight": 0.0, "soft_ce_weight": 0.0, "w1_weight": 0.0,
               "text_gate_weight": 0.0}
    return [_entry("token_ce", _config("token_ce", v, {})), _entry("bbox_geo", _config("bbox_geo", v, {})),
            _entry("coord_reg", _config("coord_reg", v, reg))]


_DEFAULT_OBJECTIVES: Mapping[str, Callable[[Any], list[PipelineEntry]]] = {
    VARIANT_STAGE2_TWO_CHANNEL: _two_channel_default,
    VARIANT_STAGE2_ROLLOUT_ALIGNED: _rollout_aligned_default,
}


def pipeline_extra(cfg: Any) -> dict[str, Any]:
    """The §6.4 ``extra``: ``variant`` plus the ST keys read by the variant."""
    if cfg.variant == VARIANT_STAGE2_TWO_CHANNEL:
        return {"variant": cfg.variant, "stage2_ab.coord_ctx_embed_mode": cfg.stage2_ab.coord_ctx_embed_mode,
                "stage2_ab.coord_decode_mode": cfg.stage2_ab.coord_decode_mode}
    if cfg.variant == VARIANT_STAGE2_ROLLOUT_ALIGNED:
        return {"variant": cfg.variant, "rollout_matching.coord_decode_mode": cfg.rollout_matching.coord_decode_mode}
    return {"variant": cfg.variant}


def default_manifest(cfg: Any) -> PipelineManifest:
    """§6.3 manifest for a Stage-2 ``CoordExpConfig`` whose pipeline is omitted."""
    if cfg.variant not in _DEFAULT_OBJECTIVES:
        raise ValueError(f"custom.trainer_variant {cfg.variant!r} has no objective pipeline (Stage-2 only); "
                         f"use stage1_manifest(custom.coord_soft_ce_w1) for Stage-1")
    diag = _entry("coord_diag", _config("coord_diag", cfg.variant, {}))
    return PipelineManifest(variant=cfg.variant, objective=tuple(_DEFAULT_OBJECTIVES[cfg.variant](cfg)),
                            diagnostics=(diag,), extra=pipeline_extra(cfg), authored=False)


def resolve_pipeline(cfg: Any) -> PipelineManifest:
    """The run's manifest: the authored ``stage2_ab.pipeline`` / ``rollout_matching.pipeline`` parsed strictly, or
    the §6.3 default when omitted. (Flat-knob / cross-variant guardrails, §6.2, are enforced by the config loader.)"""
    if cfg.variant == VARIANT_STAGE2_TWO_CHANNEL:
        raw = cfg.stage2_ab.pipeline
    elif cfg.variant == VARIANT_STAGE2_ROLLOUT_ALIGNED:
        raw = cfg.rollout_matching.pipeline
    else:
        raise ValueError(f"custom.trainer_variant {cfg.variant!r} has no objective pipeline (Stage-2 only)")
    if raw is None:
        return default_manifest(cfg)
    return parse_pipeline(raw, cfg.variant, pipeline_extra(cfg))


def stage1_manifest(soft: CoordSoftCEW1Config) -> PipelineManifest:
    """Stage-1 objective as registry modules (context ``gt``) from ``custom.coord_soft_ce_w1``: ``token_ce`` (desc
    1; coord tokens in the CE iff the coord loss is off) and, when enabled, ``coord_reg`` with its weights."""
    v = VARIANT_STAGE1
    src = "stage1_manifest(custom.coord_soft_ce_w1).{}.config".format
    objective = [_entry("token_ce", _config("token_ce", v, {"coord_token_ce_weight": 0.0 if soft.enabled else 1.0},
                                            src("token_ce")))]
    if soft.enabled:
        objective.append(_entry("coord_reg", _config("coord_reg", v, {
            "coord_ce_weight": soft.ce_weight, "soft_ce_weight": soft.soft_ce_weight, "w1_weight": soft.w1_weight,
            "coord_gate_weight": soft.gate_weight, "text_gate_weight": soft.text_gate_weight,
            "temperature": soft.temperature, "target_sigma": soft.target_sigma,
            "target_truncate": soft.target_truncate}, src("coord_reg"))))
    return PipelineManifest(variant=v, objective=tuple(objective), diagnostics=(), extra={"variant": v})


# --- manifest file, init log, validate-config ------------------------------------------------------------------

def init_log_line(manifest: PipelineManifest, *, config_path: Optional[str], run_name: Optional[str],
                  seed: Optional[int]) -> str:
    """The init log line: modules (list order, ``name[w=..,ch=..]``, disabled ones marked), checksum, run context."""
    mods = []
    for e in manifest.objective + manifest.diagnostics:
        mods.append(f"{e.name}[w={float(e.weight)!r},ch={'+'.join(e.channels)}"
                    f"{'' if e.enabled else ',disabled'}]")
    return (f"objective pipeline ({manifest.variant}, {'authored' if manifest.authored else 'default'}): "
            f"modules={', '.join(mods)} checksum={manifest.checksum} config={config_path} run_name={run_name} "
            f"seed={seed}")


def write_manifest(output_dir: str | os.PathLike[str], manifest: PipelineManifest, *,
                   config_path: Optional[str] = None, run_name: Optional[str] = None, seed: Optional[int] = None,
                   log: Optional[logging.Logger] = None) -> tuple[str, str]:
    """Write ``<output_dir>/pipeline_manifest.json`` (canonical JSON + newline; its bytes without the newline hash
    to ``manifest.checksum``) and log the init line at INFO. Returns ``(path, log line)``."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(os.fspath(output_dir), MANIFEST_FILENAME)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(manifest.canonical_json() + "\n")
    line = init_log_line(manifest, config_path=config_path, run_name=run_name, seed=seed)
    (log or logger).info(line)
    return path, line


def describe_pipeline(cfg: Any) -> tuple[list[str], str]:
    """``(module lines, checksum)`` of the run's manifest (for ``coordexp-swift validate-config``, which prints
    ``pipeline_checksum: <hex>``)."""
    manifest = resolve_pipeline(cfg)
    return manifest.module_lines(), manifest.checksum
