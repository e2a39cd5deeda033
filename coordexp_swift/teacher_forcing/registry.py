"""Module registry (SPEC §6.1): name -> :class:`ModuleSpec` for the built-in objective / diagnostics modules plus
third-party modules discovered from the entry-point group ``coordexp_swift.modules`` (``name = pkg.mod:Class``;
the class follows ``modules.base.PipelineModule``: ``name``, ``kind``, ``config_classes``, ``channels``).
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
from dataclasses import dataclass
from typing import Mapping, Optional

from coordexp_swift.teacher_forcing.modules.base import PipelineModule
from coordexp_swift.teacher_forcing.modules.bbox_geo import BBoxGeoModule
from coordexp_swift.teacher_forcing.modules.coord_diag import CoordDiagModule
from coordexp_swift.teacher_forcing.modules.coord_reg import CoordRegModule
from coordexp_swift.teacher_forcing.modules.token_ce import TokenCEModule
from coordexp_swift.teacher_forcing.modules.token_type_diag import TokenTypeDiagModule

__all__ = ["BUILTIN_MODULES", "ENTRY_POINT_GROUP", "KINDS", "ModuleSpec", "available_names", "module_registry"]

ENTRY_POINT_GROUP = "coordexp_swift.modules"
#: list name in the pipeline mapping -> module kind.
KINDS: Mapping[str, str] = {"objective": "objective", "diagnostics": "diagnostics"}


@dataclass(frozen=True)
class ModuleSpec:
    """A registered module: ``name``, ``kind`` (``objective`` | ``diagnostics``, = the pipeline list it belongs
    to), ``cls``, ``config_classes`` (variant -> config dataclass) and allowed ``channels``; ``source`` is
    ``"builtin"`` or the entry point's value."""

    name: str
    kind: str
    cls: type
    config_classes: Mapping[str, type]
    channels: tuple[str, ...]
    source: str = "builtin"

    def config_class(self, variant: str) -> Optional[type]:
        """The config dataclass for ``variant`` (``None`` if the module does not support it)."""
        return self.config_classes.get(variant)


def spec_of(cls: type, source: str = "builtin") -> ModuleSpec:
    """Validate a module class and describe it; ``ValueError`` naming ``source`` if it breaks the contract."""
    missing = [a for a in ("name", "kind", "config_classes") if not hasattr(cls, a)]
    if not isinstance(cls, type) or not issubclass(cls, PipelineModule) or missing:
        raise ValueError(f"module {source!r} must be a subclass of coordexp_swift.teacher_forcing.modules.base."
                         f"PipelineModule with name/kind/config_classes (missing: {missing})")
    if cls.kind not in KINDS.values():
        raise ValueError(f"module {source!r}: kind must be 'objective' or 'diagnostics', got {cls.kind!r}")
    for variant, cfg_cls in cls.config_classes.items():
        if not (dataclasses.is_dataclass(cfg_cls) and isinstance(cfg_cls, type)):
            raise ValueError(f"module {source!r}: config_classes[{variant!r}] must be a dataclass")
    channels = tuple(getattr(cls, "channels", ("A", "B")))
    return ModuleSpec(name=cls.name, kind=cls.kind, cls=cls, config_classes=dict(cls.config_classes),
                      channels=channels, source=source)


BUILTIN_MODULES: Mapping[str, ModuleSpec] = {
    c.name: spec_of(c) for c in (TokenCEModule, BBoxGeoModule, CoordRegModule, CoordDiagModule, TokenTypeDiagModule)
}


def _entry_point_specs() -> dict[str, ModuleSpec]:
    out: dict[str, ModuleSpec] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = ep.load()
        except Exception as exc:  # noqa: BLE001 - re-raised with the entry point named
            raise ValueError(f"entry point {ep.name!r} = {ep.value!r} in group {ENTRY_POINT_GROUP!r} failed to "
                             f"load: {type(exc).__name__}: {exc}") from exc
        spec = spec_of(cls, source=ep.value)
        if spec.name != ep.name:
            raise ValueError(f"entry point {ep.name!r} = {ep.value!r}: the class declares name {spec.name!r}; "
                             f"they must be equal")
        if spec.name in BUILTIN_MODULES or spec.name in out:
            raise ValueError(f"entry point {ep.name!r} = {ep.value!r} in group {ENTRY_POINT_GROUP!r} duplicates "
                             f"the registered module name {spec.name!r}")
        out[spec.name] = spec
    return out


def module_registry() -> dict[str, ModuleSpec]:
    """Built-in modules plus those discovered from the ``coordexp_swift.modules`` entry-point group (looked up on
    every call, so newly installed packages are seen)."""
    return {**BUILTIN_MODULES, **_entry_point_specs()}


def available_names(kind: str, registry: Optional[Mapping[str, ModuleSpec]] = None) -> list[str]:
    """Sorted names of the modules of ``kind``."""
    reg = module_registry() if registry is None else registry
    return sorted(n for n, s in reg.items() if s.kind == kind)
