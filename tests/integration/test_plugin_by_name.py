"""The coordexp plugin by name (issue 12 item 1): ``external_plugins: [coordexp_swift]`` and
``--custom_register_path coordexp_swift`` work from any directory; the file-path form keeps working."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from coordexp_swift import swift_argv_hook as hook
from tests.integration.swift_run import REPO, read_logging_jsonl, run_swift_sft, tiny_stage1_config


def test_plugin_name_resolves_to_the_installed_plugin_file(tmp_path, monkeypatch):
    """issue 12 item 1: the value ``coordexp_swift`` of either plugin flag (list, ``=`` and multi-value forms)
    becomes the absolute path of the package's plugin file; file paths and other flags are left alone."""
    monkeypatch.chdir(tmp_path)
    path = hook.plugin_file()
    assert os.path.isabs(path) and os.path.isfile(path)
    assert Path(path).parent == Path(hook.__file__).parent / "swift_plugin"
    argv = ["--model", "coordexp_swift", "--external_plugins", "coordexp_swift", "x/other.py", "--seed", "1",
            "--custom_register_path=coordexp_swift", "--custom_register_path", "plugins/coordexp.py"]
    assert hook.resolve_plugin_names(argv) == [
        "--model", "coordexp_swift", "--external_plugins", path, "x/other.py", "--seed", "1",
        f"--custom_register_path={path}", "--custom_register_path", "plugins/coordexp.py"]
    (tmp_path / "coordexp_swift").write_text("# a user's own plugin file that happens to have this name\n")
    assert hook.resolve_plugin_names(["--external_plugins", "coordexp_swift"]) == ["--external_plugins",
                                                                                   "coordexp_swift"]


def test_plugin_file_sits_alone_in_its_folder():
    """issue 12 item 1: ms-swift puts a plugin file's folder on ``sys.path``; the installed plugin's folder holds
    no module but the plugin file, so no package module becomes importable as a bare top-level name."""
    folder = Path(hook.plugin_file()).parent
    assert sorted(p.name for p in folder.glob("*.py")) == ["__init__.py", "coordexp.py"]
    assert not [p for p in folder.iterdir() if p.is_dir() and p.name != "__pycache__"]
    assert "register()" in Path(hook.plugin_file()).read_text()
    assert Path(hook.plugin_file()).read_text().split('"""')[-1] == \
        (REPO / "plugins" / "coordexp.py").read_text().split('"""')[-1]


def _run_from(tmp_path, tiny_model_dir, shapes_dir, name, extra_args=None, drop=(), **overrides):
    """2 Stage-1 steps of real ``swift sft`` with the working directory a fresh folder outside the repository."""
    cwd = tmp_path / name
    cwd.mkdir()
    out = cwd / "out"
    cfg = tiny_stage1_config(tiny_model_dir, shapes_dir, out, max_steps=2, **overrides)
    for key in drop:
        del cfg[key]
    proc = run_swift_sft(cfg, cwd, cwd=cwd, extra_args=extra_args, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:] + proc.stdout[-2000:]
    return cwd, out


def _assert_coordexp_trained(out: Path) -> dict:
    steps = [r for r in read_logging_jsonl(out) if "grad_norm" in r]
    assert len(steps) == 2
    assert all("loss/coord_reg" in r and "coord_token_acc" in r for r in steps)  # only the coordexp trainer logs these
    assert json.loads((out / "coordexp_config.json").read_text())["variant"] == "stage1"
    return json.loads((out / "args.json").read_text())


@pytest.mark.integration
@pytest.mark.parametrize("form", ["external_plugins", "custom_register_path"])
def test_swift_sft_with_plugin_by_name_from_any_directory(tiny_model_dir, shapes_dir, tmp_path, form):
    """issue 12 item 1: ``swift sft run.yaml`` with ``external_plugins: [coordexp_swift]`` (YAML) and with
    ``--custom_register_path coordexp_swift`` (the design card's CLI line), run from a directory outside the
    repository, trains with the coordexp Stage-1 trainer; ms-swift records the resolved plugin file."""
    assert REPO not in tmp_path.parents
    if form == "external_plugins":
        cwd, out = _run_from(tmp_path, tiny_model_dir, shapes_dir, form, external_plugins=["coordexp_swift"])
    else:
        cwd, out = _run_from(tmp_path, tiny_model_dir, shapes_dir, form, drop=["external_plugins"],
                             extra_args=["--custom_register_path", "coordexp_swift"])
    args = _assert_coordexp_trained(out)
    assert hook.plugin_file() in args["external_plugins"]


@pytest.mark.integration
def test_swift_sft_with_relative_plugin_file_path(tiny_model_dir, shapes_dir, tmp_path):
    """issue 12 item 1: the file-path form keeps working — a plugin file given relative to the working directory
    (as in a clone: ``plugins/coordexp.py``) is imported as that file, not rewritten."""
    cwd = tmp_path / "clone"
    (cwd / "plugins").mkdir(parents=True)
    shutil.copy(REPO / "plugins" / "coordexp.py", cwd / "plugins" / "coordexp.py")
    out = cwd / "out"
    cfg = tiny_stage1_config(tiny_model_dir, shapes_dir, out, max_steps=2, external_plugins=["plugins/coordexp.py"])
    proc = run_swift_sft(cfg, cwd, cwd=cwd, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:] + proc.stdout[-2000:]
    args = _assert_coordexp_trained(out)
    assert args["external_plugins"] == ["plugins/coordexp.py"]
