"""The ``coordexp-swift`` console script lists only commands that exist (issue 8 item 7; issue 13 item 9)."""
from __future__ import annotations

import configparser
import importlib
import importlib.util
import inspect

import pytest

from coordexp_swift import cli


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_listed_command_resolves_to_a_callable(name):
    """issue 8 item 7: each listed sub-command's ``module:function`` imports and is a function of one ``argv``
    argument — a command whose module does not exist fails."""
    target = cli.COMMANDS[name][0]
    module, _, func = target.partition(":")
    assert importlib.util.find_spec(module) is not None, f"{name}: module {module} does not exist"
    fn = getattr(importlib.import_module(module), func)
    params = list(inspect.signature(fn).parameters.values())
    assert callable(fn) and len(params) >= 1 and all(p.default is not p.empty for p in params[1:]), target


def test_audit_tensor_flow_is_offered(capsys, tmp_path):
    """issue 9 item 7 / issue 10 item 4 (seed 001 2.3): ``audit-tensor-flow`` is listed in the help and dispatches
    to its module; usage errors exit 2 with a message — no ``--config`` (argparse), and a YAML that does not exist
    (``invalid: ...`` from the same validation as ``validate-config``)."""
    assert cli.main(["--help"]) == 0
    help_text = capsys.readouterr().out
    listed = [line.split()[0] for line in help_text.split("commands:\n", 1)[1].splitlines() if line.strip()]
    assert listed == list(cli.COMMANDS) and "audit-tensor-flow" in listed
    assert cli.main(["audit-tensor-flow"]) == 2
    assert "--config" in capsys.readouterr().err
    missing = tmp_path / "nope.yaml"
    assert cli.main(["audit-tensor-flow", "--config", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("invalid: ") and "nope.yaml" in err


def test_console_script_points_at_cli_main(repo_root):
    """issue 8 item 7: the installed ``coordexp-swift`` entry point is ``coordexp_swift.cli:main``."""
    cfg = configparser.ConfigParser()
    cfg.read(repo_root / "setup.cfg")
    scripts = dict(line.split(" = ") for line in cfg["options.entry_points"]["console_scripts"].strip().splitlines())
    assert scripts == {"coordexp-swift": "coordexp_swift.cli:main"}
