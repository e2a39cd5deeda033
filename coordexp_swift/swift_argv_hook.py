"""Startup hook (imported by ``coordexp_swift_argv.pth``) that lets ``swift sft run.yaml`` accept ``custom:``.

``swift sft run.yaml`` turns every top-level YAML key into a ``--key value`` flag for ms-swift's argparse parser,
which allows abbreviations: ``--custom`` is then an *ambiguous prefix* of ``--custom_dataset_info`` and
``--custom_register_path`` and argparse exits before any plugin is imported. In ms-swift training entry scripts
only, this hook renames the three coordexp section flags to ``--coordexp.<section>``, which argparse leaves in
``remaining_argv`` (``ignore_args_error: true``) and the coordexp plugin reads back. Every other process is untouched.

In the same scripts it also:

- resolves the plugin *by name*: ms-swift imports ``external_plugins`` / ``custom_register_path`` entries as files
  relative to the working directory, so ``coordexp_swift`` (the package name) is rewritten to the absolute path of
  the installed plugin file (``coordexp_swift/swift_plugin/coordexp.py``); file paths are left alone;
- avoids the DeepSpeed-on-CPU precision trap: ms-swift resolves ``fp16`` to true for float32/float16 weights on any
  device, and DeepSpeed's ``fp16: auto`` then fails on CPU ("Type fp16 is not supported on your device"). With
  ``--deepspeed`` and ``--use_cpu true`` and no ``--fp16`` given, ``--fp16 false`` is appended (on CPU, accelerate
  ignores fp16 without DeepSpeed anyway). An explicit ``--fp16`` is never changed.
"""
import os
import sys

SECTIONS = ("custom", "stage2_ab", "rollout_matching")
ENTRY_SCRIPTS = ("swift/cli/sft.py", "swift/cli/pt.py", "swift/cli/rlhf.py")
PREFIX = "--coordexp."


def rewrite(argv: list) -> list:
    """``['--custom', '{...}']`` -> ``['--coordexp.custom', '{...}']`` (also ``--custom=...``)."""
    out = []
    for tok in argv:
        for name in SECTIONS:
            if tok == f"--{name}" or tok.startswith(f"--{name}="):
                tok = PREFIX + tok[2:]
                break
        out.append(tok)
    return out


PLUGIN_FLAGS = ("external_plugins", "custom_register_path")
PLUGIN_NAMES = ("coordexp_swift",)  # values of PLUGIN_FLAGS that mean "the installed coordexp plugin"
_TRUE = ("true", "1", "yes", "y", "t", "on")  # transformers' string_to_bool


def plugin_file() -> str:
    """Absolute path of the installed plugin file that the name ``coordexp_swift`` stands for."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "swift_plugin", "coordexp.py")


def _resolve_plugin_value(value: str) -> str:
    if value.rstrip("/") in PLUGIN_NAMES and not os.path.isfile(value):
        return plugin_file()
    return value


def resolve_plugin_names(argv: list) -> list:
    """``['--external_plugins', 'coordexp_swift', 'x.py']`` -> ``['--external_plugins', '/abs/.../coordexp.py',
    'x.py']`` (also ``--custom_register_path`` and the ``--flag=value`` form); everything else unchanged."""
    out = []
    in_plugin_flag = False
    for tok in argv:
        if tok.startswith("--"):
            name, eq, val = tok[2:].partition("=")
            in_plugin_flag = name in PLUGIN_FLAGS and not eq
            if name in PLUGIN_FLAGS and eq:
                tok = f"--{name}={_resolve_plugin_value(val)}"
        elif in_plugin_flag:
            tok = _resolve_plugin_value(tok)
        out.append(tok)
    return out


def _flag_values(argv: list) -> dict:
    """``{flag: [values...]}`` for ``--flag v1 v2`` / ``--flag=v``; the last occurrence wins."""
    flags: dict = {}
    key = None
    for tok in argv:
        if tok.startswith("--") and len(tok) > 2:
            key, eq, val = tok[2:].partition("=")
            flags[key] = [val] if eq else []
            key = None if eq else key
        elif key is not None:
            flags[key].append(tok)
    return flags


def cpu_deepspeed_precision(argv: list) -> list:
    """Append ``--fp16 false`` when ``--deepspeed`` is set, ``--use_cpu`` is true and ``--fp16`` is not given."""
    flags = _flag_values(argv)
    use_cpu = flags.get("use_cpu")
    cpu = use_cpu is not None and (not use_cpu or str(use_cpu[-1]).strip().lower() in _TRUE)
    has_ds = bool(flags.get("deepspeed")) and str(flags["deepspeed"][-1]).strip().lower() not in ("", "none", "null")
    if cpu and has_ds and "fp16" not in flags:
        return [*argv, "--fp16", "false"]
    return list(argv)


argv0 = (getattr(sys, "argv", None) or [""])[0].replace("\\", "/")
if argv0.endswith(ENTRY_SCRIPTS):
    sys.argv[1:] = cpu_deepspeed_precision(resolve_plugin_names(rewrite(sys.argv[1:])))

# issue 13 item 1: coordexp sections without the coordexp plugin would be dropped by ms-swift with a generic
# `remaining_argv` warning (typos unreported, plain SFT trained): stop here with the same message validate-config
# gives (coordexp_swift.run_context.plugin_missing_message).
if argv0.endswith(ENTRY_SCRIPTS) and any(t.startswith(PREFIX) for t in sys.argv[1:]):
    from coordexp_swift.run_context import plugin_missing_message

    _missing = plugin_missing_message(sys.argv[1:])
    if _missing:
        sys.stderr.write(f"coordexp-swift: invalid: {os.environ.get('SWIFT_CONFIG_FILE') or 'the run arguments'}: "
                         f"{_missing}\n")
        sys.stderr.flush()
        os._exit(2)  # a .pth import cannot raise SystemExit cleanly

# issue 13 item 7: `swift sft run.yaml` reads the YAML in the `swift` launcher itself (swift.cli.main), where a
# non-UTF-8 byte is a bare "'utf-8' codec can't decode byte 0xff in position 474": name the file, line and column.
_args = getattr(sys, "argv", None) or []
if (argv0.endswith("/swift") and len(_args) > 2 and _args[1] in ("sft", "pt", "rlhf")
        and _args[2].endswith((".yaml", ".yml")) and os.path.isfile(_args[2])):
    with open(_args[2], "rb") as _f:
        _raw = _f.read()
    try:
        _raw.decode("utf-8")
    except UnicodeDecodeError as _exc:
        from coordexp_swift.config.loader import describe_bad_utf8

        sys.stderr.write(f"coordexp-swift: invalid: {_args[2]}: {describe_bad_utf8(_raw, _exc)}\n")
        sys.stderr.flush()
        os._exit(2)  # a .pth import cannot raise SystemExit cleanly
