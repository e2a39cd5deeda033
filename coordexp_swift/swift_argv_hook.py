"""Startup hook (imported by ``coordexp_swift_argv.pth``) that lets ``swift sft run.yaml`` accept ``custom:``.

``swift sft run.yaml`` turns every top-level YAML key into a ``--key value`` flag for ms-swift's argparse parser,
which allows abbreviations: ``--custom`` is then an *ambiguous prefix* of ``--custom_dataset_info`` and
``--custom_register_path`` and argparse exits before any plugin is imported. In ms-swift training entry scripts
only, this hook renames the three coordexp section flags to ``--coordexp.<section>``, which argparse leaves in
``remaining_argv`` (``ignore_args_error: true``) and the coordexp plugin reads back. Every other process is untouched.
"""
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


argv0 = (getattr(sys, "argv", None) or [""])[0].replace("\\", "/")
if argv0.endswith(ENTRY_SCRIPTS):
    sys.argv[1:] = rewrite(sys.argv[1:])
