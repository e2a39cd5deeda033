"""The run's resolved configuration, shared by the plugin (which builds it) and the trainers (which read it).

``swift sft run.yaml`` expands every top-level YAML key into ``--key value`` flags (dict values as JSON strings) and
imports ``external_plugins`` inside the arguments' ``__post_init__``, i.e. before the model loads. The plugin
parses those same flags here, validates every key (ms-swift's and the coordexp sections), and keeps the result for
the trainer.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from coordexp_swift.config.loader import CoordExpConfig, load_coordexp_config
from coordexp_swift.config.strict import check_unknown_keys

COORDEXP_SECTIONS = ("custom", "stage2_ab", "rollout_matching")
HOOK_PREFIX = "coordexp."  # section flags renamed by coordexp_swift.swift_argv_hook (see there why)


@dataclass(frozen=True)
class RunContext:
    """``config``: the resolved coordexp sections; ``swift_args``: ms-swift's own flags as given (raw strings or
    lists of strings); ``config_path``: the YAML (``SWIFT_CONFIG_FILE``) if the run came from one;
    ``swift_namespace``: ms-swift's parser's typed values."""

    config: CoordExpConfig
    swift_args: Mapping[str, Any] = field(default_factory=dict)
    config_path: str | None = None
    swift_namespace: Any = None  # ms-swift's parsed (typed) arguments, argparse Namespace

    def dataset_entries(self) -> list[str]:
        """``dataset`` + ``val_dataset`` entries as ms-swift parsed them (typed lists)."""
        ns = self.swift_namespace
        if ns is None:
            return self.dataset_paths()
        return [*(ns.dataset or []), *(ns.val_dataset or [])]

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


# --- the one validation path (validate-config and the plugin's start-up) --------------------------------------

def yaml_to_argv(top: Mapping[str, Any]) -> list[str]:
    """The flags ``swift sft run.yaml`` expands a run YAML into (mirror of ``swift.cli.main.parse_yaml_args``:
    ``ENV`` dropped, lists → one token per item via ``str``, dicts → JSON, everything else ``str``), followed by the
    argv hook's renaming of the coordexp section flags. ``test_bad_input`` checks it against ms-swift's own."""
    from coordexp_swift.swift_argv_hook import rewrite

    argv: list[str] = []
    for k, v in top.items():
        if k == "ENV":
            continue
        argv.append(f"--{k}")
        if isinstance(v, list):
            argv += [str(i) for i in v]
        else:
            argv.append(json.dumps(v, ensure_ascii=False) if isinstance(v, dict) else str(v))
    return rewrite(argv)


class _ArgparseError(ValueError):
    """ms-swift's argparse rejected a value (raised instead of argparse's ``sys.exit``)."""


def _raise_argparse(message: str) -> None:
    raise _ArgparseError(message)


_SWIFT_PARSER: Any = None


def swift_parser() -> Any:
    """ms-swift's own ``HfArgumentParser([SftArguments])`` (built exactly as ``swift.utils.parse_args`` does), whose
    errors raise ``ValueError`` instead of exiting."""
    global _SWIFT_PARSER
    if _SWIFT_PARSER is None:
        from swift.arguments import SftArguments
        from swift.utils.utils import _patch_get_type_hints
        from transformers import HfArgumentParser

        with _patch_get_type_hints():
            parser = HfArgumentParser([SftArguments])
        parser.error = _raise_argparse  # type: ignore[method-assign]
        _SWIFT_PARSER = parser
    return _SWIFT_PARSER


#: Value ranges of common ms-swift numeric keys (argparse checks only the type). (lo, lo_inclusive, hi, hi_incl.)
SWIFT_RANGES: Mapping[str, tuple[float | None, bool, float | None, bool]] = {
    "learning_rate": (0.0, True, None, False), "weight_decay": (0.0, True, None, False),
    "warmup_ratio": (0.0, True, 1.0, True), "warmup_steps": (0, True, None, False),
    "num_train_epochs": (0.0, False, None, False), "per_device_train_batch_size": (1, True, None, False),
    "per_device_eval_batch_size": (1, True, None, False), "gradient_accumulation_steps": (1, True, None, False),
    "max_length": (1, True, None, False), "max_grad_norm": (0.0, True, None, False),
    "adam_beta1": (0.0, True, 1.0, False), "adam_beta2": (0.0, True, 1.0, False),
    "adam_epsilon": (0.0, False, None, False), "split_dataset_ratio": (0.0, True, 1.0, False),
    "logging_steps": (0.0, False, None, False), "save_steps": (0.0, False, None, False),
    "eval_steps": (0.0, False, None, False), "dataloader_num_workers": (0, True, None, False),
    "dataset_num_proc": (1, True, None, False), "seed": (0, True, None, False), "data_seed": (0, True, None, False),
    "lora_rank": (1, True, None, False), "lora_alpha": (0, False, None, False), "lora_dropout": (0.0, True, 1.0, False),
    "max_pixels": (1, True, None, False), "save_total_limit": (0, True, None, False),
    "label_smoothing_factor": (0.0, True, 1.0, False), "packing_length": (1, True, None, False),
}

#: ms-swift truncation strategies that would cut a CoordJSON answer (a silent loss of objects).
_CUTTING_TRUNCATION = ("left", "right", "split")


def _flag_groups(argv: Sequence[str]) -> list[tuple[str, list[str]]]:
    """``[(key, [values...]), ...]`` in argv order (``--k=v`` included; hook prefix stripped)."""
    groups: list[tuple[str, list[str]]] = []
    for tok in argv:
        if tok.startswith("--") and len(tok) > 2:
            key = tok[2:]
            key = key[len(HOOK_PREFIX):] if key.startswith(HOOK_PREFIX) else key
            if "=" in key:
                key, val = key.split("=", 1)
                groups.append((key.replace("-", "_"), [val]))
            else:
                groups.append((key.replace("-", "_"), []))
        elif groups:
            groups[-1][1].append(tok)
    return groups


def _check_range(key: str, value: Any) -> str | None:
    vals = value if isinstance(value, (list, tuple)) else [value]
    for v in vals:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if isinstance(v, float) and not math.isfinite(v):
            return f"{key}: {v!r} is not a finite number"
        if key in SWIFT_RANGES:
            lo, lo_in, hi, hi_in = SWIFT_RANGES[key]
            if key in ("warmup_steps", "save_total_limit", "seed", "data_seed") and v == -1:
                continue
            bad_lo = lo is not None and (v < lo if lo_in else v <= lo)
            bad_hi = hi is not None and (v > hi if hi_in else v >= hi)
            if bad_lo or bad_hi:
                lo_s = "" if lo is None else f"{'>=' if lo_in else '>'} {lo}"
                hi_s = "" if hi is None else f"{'<=' if hi_in else '<'} {hi}"
                return f"{key}: {v!r} is out of range (must be {' and '.join(x for x in (lo_s, hi_s) if x)})"
    return None


def _argparse_problem(message: str) -> str:
    """``argument --lr/--l-r: invalid float value: 'x'`` → ``lr: invalid float value: 'x' (...)``."""
    m = re.match(r"argument --([A-Za-z0-9_.]+)(?:/--[^:]*)?: (.*)", message, re.S)
    if m:
        return f"{m.group(1)}: {m.group(2)} (ms-swift's argument parser rejects this value)"
    return f"{message} (ms-swift's argument parser rejects the arguments)"


def is_coordexp_plugin(entry: str) -> bool:
    """Whether an ``external_plugins`` entry is the coordexp plugin: its file name contains ``coordexp``, or the
    file (resolved against the working directory) imports ``coordexp_swift``."""
    if "coordexp" in os.path.basename(entry):
        return True
    try:
        with open(entry, encoding="utf-8", errors="replace") as f:
            return "coordexp_swift" in f.read(65536)
    except OSError:
        return False


def plugin_missing_message(argv: Sequence[str]) -> str | None:
    """The error for a run whose flags carry coordexp sections but whose ``external_plugins`` /
    ``custom_register_path`` name no coordexp plugin (ms-swift would drop the sections with a generic warning and
    train something else); ``None`` when fine. Used by the argv hook at ``swift sft`` start-up and by
    :func:`validate_run`."""
    groups = _flag_groups(argv)
    sections = sorted({k for k, _ in groups if k in COORDEXP_SECTIONS})
    if not sections:
        return None
    plugins = [v for k, vals in groups if k in ("external_plugins", "custom_register_path") for v in vals]
    if any(is_coordexp_plugin(p) for p in plugins):
        return None
    return (f"the run config has the coordexp section(s) {', '.join(sections)} but external_plugins "
            f"{plugins or '(not set)'} does not list the coordexp plugin, so ms-swift would ignore them; add "
            f"`external_plugins: [plugins/coordexp.py]`")


def _section_values(groups: Sequence[tuple[str, list[str]]]) -> dict[str, Any]:
    sections: dict[str, Any] = {}
    for key, vals in groups:
        if key not in COORDEXP_SECTIONS:
            continue
        if key in sections:
            raise ValueError(f"{key}: given twice")
        if len(vals) != 1:
            what = "no value" if not vals else f"a list of {len(vals)} items"
            raise ValueError(f"{key}: expected a mapping, got {what} (write `{key}:` as a YAML mapping, not a list)")
        if vals[0] in ("None", "null", ""):
            raise ValueError(f"{key}: the section is empty (null); give a mapping (`{key}: {{}}` takes every "
                             f"default) or remove the key")
        sections[key] = vals[0]
    return sections


def validate_run(argv: Sequence[str], *, config_path: str | None = None,
                 top_level: Mapping[str, Any] | None = None) -> RunContext:
    """Validate a whole ``swift sft`` run — THE validation path of ``validate-config`` and of the plugin start-up.

    ``argv``: the flags ms-swift parses (for a YAML: :func:`yaml_to_argv` of it, i.e. what ``swift sft run.yaml``
    passes after the argv hook); ``config_path``: the YAML, read strictly (duplicate keys, UTF-8) and prefixed to
    every message; ``top_level``: its mapping (read from ``config_path`` when omitted). Checks, in order:

    1. ms-swift's own parser (``HfArgumentParser(SftArguments)``) accepts every value;
    2. every key (YAML keys and ``--flags``) is an ms-swift key or a coordexp section (closest keys only); a key
       that takes one value got one; numbers are finite and within :data:`SWIFT_RANGES`;
    3. sections need the coordexp plugin in ``external_plugins`` and ``ignore_args_error: true``;
    4. the coordexp sections (``load_coordexp_config``) and, for Stage-2, the objective pipeline they resolve to;
       static packing only; no answer-cutting ``truncation_strategy``.

    Raises ``ValueError("<config_path>: <key>: <problem>")``.
    """
    src = config_path or "the run arguments"
    if config_path is not None and top_level is None:
        from coordexp_swift.config.loader import load_yaml_file

        top_level = load_yaml_file(config_path)
    groups = _flag_groups(argv)
    keys = list(dict.fromkeys([*(k for k in (top_level or {}) if k != "ENV"), *(k for k, _ in groups)]))
    try:
        ns = _parse_swift(argv, groups, keys)
        missing = plugin_missing_message(argv)
        if missing:
            raise ValueError(missing)
        sections = _section_values(groups)
        if sections and not ns.ignore_args_error:
            raise ValueError(
                f"the run config has coordexp sections {sorted(sections)} but not `ignore_args_error: true`; "
                "ms-swift rejects keys it does not know, so coordexp owns these sections and needs that flag "
                "(coordexp still rejects every unknown key itself)")
        config = load_coordexp_config(sections)
        if config.variant != "stage1":
            from coordexp_swift.teacher_forcing.manifest import resolve_pipeline

            try:
                resolve_pipeline(config)  # module names, module config keys, weights (SPEC §6.1)
            except (OverflowError, TypeError, KeyError) as exc:
                raise ValueError(f"pipeline: {type(exc).__name__}: {exc}") from None
        if ns.packing and ns.streaming:
            raise ValueError(
                "packing: true with streaming: true (iterable packing) is not supported by coordexp: its packed rows "
                "are built on the fly without the per-segment metadata the coord losses need; use static packing "
                "(streaming: false)")
        if ns.truncation_strategy in _CUTTING_TRUNCATION:
            raise ValueError(
                f"truncation_strategy: {ns.truncation_strategy!r} would cut the CoordJSON answer of an over-length "
                "sample (objects lost without a count); use 'delete' (the default) with custom.data.on_bad_sample "
                "(fail: stop naming the sample; skip: leave it out, counted)")
    except ValueError as exc:
        raise ValueError(f"{src}: {exc}") from None
    swift_args = {k: (None if not vals else vals[0] if len(vals) == 1 else vals)  # parse_flag_argv's layout
                  for k, vals in groups if k not in COORDEXP_SECTIONS}
    return RunContext(config=config, swift_args=swift_args, config_path=config_path, swift_namespace=ns)


def _parse_swift(argv: Sequence[str], groups: Sequence[tuple[str, list[str]]], keys: Sequence[str]) -> Any:
    parser = swift_parser()
    try:
        ns, _rest = parser.parse_known_args(list(argv))
    except _ArgparseError as exc:
        raise ValueError(_argparse_problem(str(exc))) from None
    check_unknown_keys(keys, swift_valid_keys() | set(COORDEXP_SECTIONS), "")
    actions = parser._option_string_actions  # noqa: SLF001 - argparse's option table
    for key, vals in groups:
        action = actions.get(f"--{key}")
        if action is None:
            continue
        single = action.nargs in (None, "?")
        if (single and len(vals) > 1) or (action.nargs == 0 and vals):
            want = "no value" if action.nargs == 0 else "one value"
            raise ValueError(f"{key}: takes {want}, got {len(vals)}: {vals} (a YAML list where ms-swift expects a "
                             f"single value; it would silently ignore all but the first)")
        problem = _check_range(key, getattr(ns, action.dest, None))
        if problem:
            raise ValueError(problem)
    return ns


def build_run_context(top_level: Mapping[str, Any], *, config_path: str | None = None) -> RunContext:
    """:func:`validate_run` of a run YAML's top-level mapping (flags as ``swift sft`` would expand them)."""
    return validate_run(yaml_to_argv(top_level), config_path=config_path, top_level=top_level)


def write_resolved_config(ctx: RunContext, output_dir: str) -> str:
    """Write ``<output_dir>/coordexp_config.json`` (resolved coordexp sections + run context + ``data_skipped``:
    the samples left out before training under ``custom.data.on_bad_sample: skip``, ``{"counts": reason → n,
    "total": n, "list": <output_dir>/coordexp_skipped.jsonl or null}``); return its path."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, "coordexp_config.json")
    loader = sys.modules.get("coordexp_swift.data.swift_loader")
    skipped = loader.skip_summary() if loader is not None else {"counts": {}, "total": 0, "list": None}
    payload = {"config_path": ctx.config_path, "variant": ctx.config.variant, **ctx.config.to_dict(),
               "data_skipped": skipped}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
        f.write("\n")
    return path
