"""The run's resolved configuration, shared by the plugin (which builds it) and the trainers (which read it).

``swift sft run.yaml`` expands every top-level YAML key into ``--key value`` flags (dict values as JSON strings) and
imports ``external_plugins`` inside the arguments' ``__post_init__``, i.e. before the model loads. The plugin
parses those same flags here, validates every key (ms-swift's and the coordexp sections), and keeps the result for
the trainer.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from coordexp_swift.config.loader import CoordExpConfig, load_coordexp_config
from coordexp_swift.config.strict import check_unknown_keys

COORDEXP_SECTIONS = ("custom", "stage2_ab", "rollout_matching")
HOOK_PREFIX = "coordexp."  # section flags renamed by coordexp_swift.swift_argv_hook (see there why)


@dataclass(frozen=True)
class RunContext:
    """``config``: the resolved coordexp sections; ``swift_args``: ms-swift's own flags as given (raw strings or
    lists of strings); ``config_path``: the YAML (``SWIFT_CONFIG_FILE``) if the run came from one."""

    config: CoordExpConfig
    swift_args: Mapping[str, Any] = field(default_factory=dict)
    config_path: str | None = None

    def dataset_paths(self) -> list[str]:
        out: list[str] = []
        for key in ("dataset", "val_dataset"):
            val = self.swift_args.get(key)
            out += [val] if isinstance(val, str) else list(val or [])
        return out


_CURRENT: RunContext | None = None


def set_current(ctx: RunContext) -> None:
    global _CURRENT
    _CURRENT = ctx


def current() -> RunContext:
    if _CURRENT is None:
        raise RuntimeError("coordexp_swift is not registered: add `external_plugins: [plugins/coordexp.py]` to the "
                           "run YAML (or call coordexp_swift.plugin.register())")
    return _CURRENT


def parse_flag_argv(argv: Sequence[str]) -> dict[str, Any]:
    """``['--a', '1', '--b', 'x', 'y', '--c']`` -> ``{'a': '1', 'b': ['x', 'y'], 'c': None}`` (ms-swift's flag layout).

    ``--coordexp.custom`` (the startup hook's rename of ``--custom``) is read back as ``custom``.
    """
    out: dict[str, Any] = {}
    key: str | None = None
    for tok in argv:
        if tok.startswith("--") and len(tok) > 2:
            key = tok[2:].replace("-", "_")
            key = key[len(HOOK_PREFIX):] if key.startswith(HOOK_PREFIX) else key
            if "=" in key:
                key, val = key.split("=", 1)
                out[key] = val
                key = None
                continue
            out[key] = None
        elif key is not None:
            prev = out[key]
            out[key] = tok if prev is None else ([*prev, tok] if isinstance(prev, list) else [prev, tok])
    return out


def swift_valid_keys() -> set[str]:
    """Every top-level key ``swift sft`` accepts: SftArguments' fields, their ``no_`` bool forms, and ``ENV``."""
    from swift.arguments import SftArguments

    keys: set[str] = set()
    for f in dataclasses.fields(SftArguments):
        keys.add(f.name)
        if f.type in (bool, "bool") or f.default is True:
            keys.add(f"no_{f.name}")
    return keys | {"ENV"}


def build_run_context(top_level: Mapping[str, Any], *, config_path: str | None = None,
                      require_ignore_args_error: bool = True) -> RunContext:
    """Validate a whole run config (top-level mapping of a run YAML, or parsed flags) and resolve it.

    Unknown keys anywhere fail with the dotted path and the closest valid key (ValueError). Section values may be
    mappings (YAML) or JSON strings (flags).
    """
    where = f" in {config_path}" if config_path else ""
    valid = swift_valid_keys() | set(COORDEXP_SECTIONS)
    try:
        check_unknown_keys(top_level.keys(), valid, "")
    except ValueError as exc:
        raise ValueError(f"{exc}{where}") from None
    sections: dict[str, Any] = {}
    for name in COORDEXP_SECTIONS:
        if name in top_level and top_level[name] is not None:
            val = top_level[name]
            if isinstance(val, list) and len(val) == 1:
                val = val[0]
            sections[name] = val
    if sections and require_ignore_args_error and str(top_level.get("ignore_args_error", "false")).lower() != "true":
        raise ValueError(
            f"the run config{where} has coordexp sections {sorted(sections)} but not `ignore_args_error: true`; "
            "ms-swift rejects keys it does not know, so coordexp owns these sections and needs that flag "
            "(coordexp still rejects every unknown key itself)")
    config = load_coordexp_config(sections, source=config_path)
    swift_args = {k: v for k, v in top_level.items() if k not in COORDEXP_SECTIONS}
    return RunContext(config=config, swift_args=swift_args, config_path=config_path)


def write_resolved_config(ctx: RunContext, output_dir: str) -> str:
    """Write ``<output_dir>/coordexp_config.json`` (resolved coordexp sections + run context); return its path."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, "coordexp_config.json")
    payload = {"config_path": ctx.config_path, "variant": ctx.config.variant, **ctx.config.to_dict()}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
        f.write("\n")
    return path
