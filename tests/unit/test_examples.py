"""``examples/`` scripts without running them (issue 12 item 5): they parse (``bash -n``), every
``coordexp-swift <sub>`` they call exists and every ``--flag`` given to it is one of that sub-command's flags (as its
own ``--help`` lists them), and the multi-node launcher refuses a run YAML of the wrong trainer before launching."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
SCRIPTS = sorted(p.relative_to(REPO).as_posix() for p in EXAMPLES.rglob("*.sh"))
CLI_SCRIPTS = ("examples/cpu_walkthrough.sh", "examples/coco/recipe.sh")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


_HELP = """import contextlib, io, json, sys
from coordexp_swift import cli
out = {}
for sub in [None, *sys.argv[1:]]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        try:
            cli.main(["--help"] if sub is None else [sub, "--help"])
        except SystemExit:
            pass
    out[sub or ""] = buf.getvalue()
print(json.dumps(out))
"""


@lru_cache(maxsize=None)
def _help_texts() -> dict[str, str]:
    """``coordexp-swift --help`` ("") and ``coordexp-swift <sub> --help`` of every listed sub-command, through the
    console script's own ``cli.main`` in one interpreter (one import of the stack instead of one per command)."""
    from coordexp_swift import cli

    proc = subprocess.run([sys.executable, "-c", _HELP, *cli.COMMANDS], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _subcommands() -> frozenset[str]:
    out = _help_texts()[""]
    return frozenset(line.split()[0] for line in out.split("commands:\n", 1)[1].splitlines() if line.strip())


def _flags(sub: str) -> frozenset[str]:
    text = _help_texts()[sub]
    assert text.startswith("usage:"), (sub, text[:200])
    return frozenset(re.findall(r"(?<![\w-])--[a-z][a-z0-9_-]*", text))


def cli_calls(text: str) -> list[tuple[str, list[str]]]:
    """``(sub-command, [--flags])`` of every ``coordexp-swift`` command line of a bash script (comments dropped,
    backslash continuations joined)."""
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    calls = []
    for line in joined.splitlines():
        for m in re.finditer(r"(?:^|[;&|(]\s*|\s)coordexp-swift\s+([a-z][a-z-]*)([^;&|\n]*)", line):
            calls.append((m.group(1), re.findall(r"(?<![\w-])--[a-z][a-z0-9_-]*", m.group(2))))
    return calls


@pytest.mark.parametrize("script", SCRIPTS)
def test_example_script_parses(script):
    """issue 12 items 3, 5: every ``examples/**/*.sh`` is valid bash (``bash -n``) and executable."""
    path = REPO / script
    proc = _run("bash", "-n", str(path))
    assert proc.returncode == 0, proc.stderr
    assert os.access(path, os.X_OK), f"{script} is not executable"


def test_cli_calls_parser_finds_commands_and_flags():
    """the scanner itself: continuation lines joined, comments skipped, flags collected per command."""
    text = ("# coordexp-swift demo --nope\nx=1; coordexp-swift eval --model \"$M\" \\\n  --jsonl v.jsonl --out_dir o\n"
            "coordexp-swift visualize --out a.png | tee log\n")
    assert cli_calls(text) == [("eval", ["--model", "--jsonl", "--out_dir"]), ("visualize", ["--out"])]


@pytest.mark.parametrize("script", CLI_SCRIPTS)
def test_example_uses_only_real_subcommands_and_flags(script):
    """issue 12 item 5: the walk-through and the COCO recipe call only ``coordexp-swift`` sub-commands the CLI lists,
    with flags each sub-command's ``--help`` lists (a renamed or invented flag fails here, not on a user's GPU)."""
    calls = cli_calls((REPO / script).read_text())
    used = {sub for sub, _ in calls}
    expected = ({"make-tiny-model", "make-shapes", "validate-config", "eval", "visualize"}
                if script.endswith("cpu_walkthrough.sh") else {"convert-coco", "expand-vocab", "validate-config", "eval"})
    assert used == expected, used
    for sub, flags in calls:
        assert sub in _subcommands(), (script, sub, sorted(_subcommands()))
        unknown = sorted(set(flags) - _flags(sub))
        assert not unknown, (script, sub, unknown)


def test_two_channel_launcher_refuses_a_stage1_yaml():
    """issue 12 item 3: ``examples/multinode/two_channel.sh`` checks ``custom.trainer_variant: stage2_two_channel``
    before starting torchrun (exit 2, naming the Stage-1 launcher); a two-channel YAML passes that check (``SWIFT``
    is a stand-in that prints its argv: the launch line is ``swift sft YAML [--deepspeed ...] [--use_cpu true]``)."""
    env = {**os.environ, "NNODES": "1", "NODE_RANK": "0", "MASTER_ADDR": "127.0.0.1", "NPROC_PER_NODE": "1"}
    script = str(EXAMPLES / "multinode" / "two_channel.sh")
    proc = subprocess.run(["bash", script, str(REPO / "configs" / "stage1" / "softce_w1.yaml")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "stage1.sh" in proc.stderr, proc.stderr
    yaml_path = str(REPO / "configs" / "stage2_two_channel" / "smoke_mixed.yaml")
    proc = subprocess.run(["bash", script, yaml_path, "--max_steps", "2"],
                          env={**env, "SWIFT": "echo", "USE_CPU": "1", "DEEPSPEED": "zero2"},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["sft", yaml_path, "--deepspeed", str(REPO / "configs" / "deepspeed" / "zero2.json"),
                                   "--use_cpu", "true", "--max_steps", "2"]
