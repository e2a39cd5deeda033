"""Unified loss registry (SPEC §4-§6): token types, rich meta, the host-built ``TeacherForcingBatch`` and the
``TeacherForcingContext`` it binds logits into (``batch.with_logits(...)``), objective /
diagnostics modules, the pipeline config + checksum, the executor and the straight-through bridge (``st``).

Pure and trainer-independent: imports ``losses``, ``data`` (the CoordJSON scanner), ``coord``, ``config`` only
(never ``rollout`` or ``trainers``; ``rollout/targets.py`` imports this package, not the other way round).
"""
from coordexp_swift.teacher_forcing import st
from coordexp_swift.teacher_forcing.batch import ContextIndex, TeacherForcingBatch, debug_checks, set_debug_checks
from coordexp_swift.teacher_forcing.context import (
    CONTEXTS,
    BoxGroupsView,
    CEWeightTable,
    CoordSlots,
    TeacherForcingContext,
    ce_weights,
)
from coordexp_swift.teacher_forcing.executor import ObjectivePipeline, PipelineResult, settings_from_config
from coordexp_swift.teacher_forcing.meta import (
    BBoxGroups,
    PrefixRecord,
    SegmentMeta,
    build_gt_meta,
    build_rollout_meta,
)
from coordexp_swift.teacher_forcing.modules.base import ModuleOutput, PipelineModule, RunSettings
from coordexp_swift.teacher_forcing.manifest import (
    MANIFEST_FILENAME,
    PipelineEntry,
    PipelineManifest,
    canonical_json,
    default_manifest,
    describe_pipeline,
    parse_pipeline,
    resolve_pipeline,
    stage1_manifest,
    write_manifest,
)
from coordexp_swift.teacher_forcing.registry import ENTRY_POINT_GROUP, ModuleSpec, module_registry
from coordexp_swift.teacher_forcing.token_types import TYPE_NAMES, partition_token_types, scan_coordjson

__all__ = [
    "CONTEXTS", "ENTRY_POINT_GROUP", "MANIFEST_FILENAME", "TYPE_NAMES",
    "BBoxGroups", "BoxGroupsView", "CEWeightTable", "CoordSlots", "ModuleOutput", "ModuleSpec", "ObjectivePipeline",
    "PipelineEntry", "PipelineManifest", "PipelineModule", "PipelineResult", "PrefixRecord", "RunSettings",
    "SegmentMeta", "TeacherForcingBatch", "TeacherForcingContext", "ContextIndex", "debug_checks", "set_debug_checks",
    "build_gt_meta", "build_rollout_meta", "canonical_json", "ce_weights", "default_manifest", "describe_pipeline",
    "module_registry", "parse_pipeline", "partition_token_types", "resolve_pipeline",
    "scan_coordjson", "settings_from_config", "st", "stage1_manifest", "write_manifest",
]
