"""The ``coordexp-swift`` console script: tools only (training always goes through ``swift sft``).

Each sub-command is a ``module:function`` taking ``argv: list[str]`` and returning an exit code; modules are
imported lazily so that ``coordexp-swift make-shapes`` does not pay for importing torch or ms-swift. Only commands
whose module exists are listed; ``audit-tensor-flow`` runs real Stage-2 steps of a run YAML and checks the SPEC §3.3
tensor-flow invariants (seed 001 2.3).
"""
from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "make-tiny-model": ("coordexp_swift.tools.tiny_model:main", "build the offline random-init tiny Qwen3-VL"),
    "expand-vocab": ("coordexp_swift.tools.expand_vocab:main", "add the 1000 coord tokens to a Qwen3-VL checkpoint"),
    "make-shapes": ("coordexp_swift.data.shapes:main", "write the synthetic coloured-shapes detection set"),
    "convert-coco": ("coordexp_swift.data.coco:main", "convert COCO instances JSON to coordexp JSONL"),
    "validate-config": ("coordexp_swift.tools.validate_config:main", "validate a run YAML without training"),
    "eval": ("coordexp_swift.eval.cli:main", "offline detection evaluation (COCO bbox mAP)"),
    "visualize": ("coordexp_swift.eval.visualize:main", "draw boxes over images / plot training curves"),
    "demo": ("coordexp_swift.tools.demo:main", "the end-to-end CPU demo"),
    "demo-frontier": ("coordexp_swift.tools.demo_frontier:main",
                      "evaluate every kept checkpoint of demo runs (steps vs parse / mean IoU / AP50)"),
    "audit-tensor-flow": ("coordexp_swift.tools.audit_tensor_flow:main",
                          "run audited Stage-2 steps of a run YAML (SPEC §3.3 invariants, JSON report)"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: coordexp-swift <command> [args]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(f"coordexp-swift: unknown command {name!r}{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    module, func = COMMANDS[name][0].split(":")
    return int(getattr(importlib.import_module(module), func)(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
