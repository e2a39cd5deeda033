"""Bad input fails fast with file, line and key; nothing is lost silently (issue 13).

Every test names the issue-13 item it traces. The config tests go through ``coordexp-swift validate-config`` (the
CLI's ``main``) and through :func:`coordexp_swift.run_context.validate_run` on the argv ``swift sft`` hands the
plugin (ms-swift's own ``parse_yaml_args`` + the argv hook), which is the plugin's start-up path.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from coordexp_swift.run_context import validate_run, yaml_to_argv
from coordexp_swift.tools.validate_config import main as validate_main

REPO = Path(__file__).resolve().parents[2]
PLUGIN = str(REPO / "plugins" / "coordexp.py")


def base_config(shapes_dir: Path, out: Path) -> dict:
    """A valid Stage-1 run config (absolute paths; the model path is not read without --data)."""
    return {
        "model": str(out / "model"), "model_type": "qwen3_vl", "template": "qwen3_vl", "torch_dtype": "float32",
        "tuner_type": "full", "dataset": [str(shapes_dir / "train.jsonl")], "split_dataset_ratio": 0.0,
        "max_length": 512, "per_device_train_batch_size": 2, "learning_rate": 1.0e-3, "max_steps": 3,
        "output_dir": str(out / "run"), "external_plugins": [PLUGIN], "ignore_args_error": True,
        "custom": {"coord_soft_ce_w1": {"enabled": True}},
    }


def write_yaml(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def run_validate(capsys, path: Path, *extra: str) -> tuple[int, str]:
    rc = validate_main([str(path), *extra])
    cap = capsys.readouterr()
    return rc, cap.err + cap.out


def swift_argv(path: Path) -> list[str]:
    """The argv the plugin sees under ``swift sft path``: ms-swift's own YAML expansion, then the argv hook."""
    from swift.cli.main import parse_yaml_args

    from coordexp_swift.swift_argv_hook import rewrite

    saved = dict(os.environ)
    try:
        argv = [str(path)]
        parse_yaml_args(argv)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return rewrite(argv)


def startup_outcome(path: Path) -> tuple[bool, str]:
    """(accepted, message) of the plugin's start-up validation for ``swift sft path``."""
    try:
        validate_run(swift_argv(path), config_path=str(path))
    except ValueError as exc:
        return False, str(exc)
    return True, ""


# --- item 10: one validation path, validate-config == plugin start-up ------------------------------------------

def _mut(**changes):
    def apply(cfg):
        for k, v in changes.items():
            if v is _DROP:
                cfg.pop(k, None)
            else:
                cfg[k] = v
    return apply


_DROP = object()

#: id -> (mutation, expected fragment of the message, or None for "accepted")
AGREEMENT_TABLE = {
    "valid": (_mut(), None),
    "valid_no_sections": (_mut(custom=_DROP), None),
    "valid_system_prompt": (_mut(system="You are a detector."), None),
    "lr_list": (_mut(learning_rate=[0.5, 0.000001]), "learning_rate: takes one value, got 2"),
    "batch_list": (_mut(per_device_train_batch_size=[2, 4]), "per_device_train_batch_size: takes one value"),
    "lr_string": (_mut(learning_rate="fast"), "learning_rate: invalid float value: 'fast'"),
    "lr_nan": (_mut(learning_rate=float("nan")), "learning_rate: nan is not a finite number"),
    "lr_negative": (_mut(learning_rate=-0.1), "learning_rate: -0.1 is out of range"),
    "warmup_ratio_2": (_mut(warmup_ratio=2.0), "warmup_ratio: 2.0 is out of range"),
    "max_length_exp": (_mut(max_length="1e3"), "max_length: invalid int value: '1e3'"),
    "max_length_zero": (_mut(max_length=0), "max_length: 0 is out of range"),
    "packing_maybe": (_mut(packing="maybe"), "packing: Truthy value expected"),
    "null_value": (_mut(learning_rate=None), "learning_rate: invalid float value: 'None'"),
    "literal_choice": (_mut(truncation_strategy="middle"), "truncation_strategy: invalid choice"),
    "system_dashes": (_mut(system="---foo"), "system: expected one argument"),
    "packing_streaming": (_mut(packing=True, streaming=True), "packing: true with streaming: true"),
    "custom_null": (_mut(custom=None), "custom: the section is empty (null)"),
    "custom_list": (_mut(custom=[{"object_field_order": "desc_first"}]), "custom: expected a mapping"),
    "no_plugin": (_mut(external_plugins=_DROP), "does not list the coordexp plugin"),
    "other_plugin": (_mut(external_plugins=["my_plugin.py"]), "does not list the coordexp plugin"),
    "no_ignore_args_error": (_mut(ignore_args_error=_DROP), "ignore_args_error: true"),
    "swift_typo": (_mut(learnig_rate=1e-3), "unknown key 'learnig_rate' — did you mean 'learning_rate'?"),
    "custom_typo": (lambda c: c["custom"].update(object_field_ordr="desc_first"),
                    "unknown key 'custom.object_field_ordr'"),
    "prompt_special": (lambda c: c["custom"].update(user_prompt="Find objects<|im_end|>"),
                       "custom.user_prompt: contains the special-token"),
    "truncation_left": (_mut(truncation_strategy="left"), "truncation_strategy: 'left' would cut"),
    "bad_sample_policy": (lambda c: c["custom"].update(data={"on_bad_sample": "ignore"}),
                          "custom.data.on_bad_sample: invalid value 'ignore'"),
}


@pytest.mark.parametrize("case", sorted(AGREEMENT_TABLE))
def test_validate_config_agrees_with_plugin_startup(case, shapes_dir, tmp_path, capsys):
    """issue 13 item 10 (and items 1, 2, 12 through it): the same config gives the same verdict and the same message
    through `validate-config` and through the plugin's start-up validation of the argv `swift sft` builds."""
    mutate, expect = AGREEMENT_TABLE[case]
    cfg = base_config(shapes_dir, tmp_path)
    mutate(cfg)
    path = write_yaml(tmp_path / "run.yaml", cfg)
    rc, out = run_validate(capsys, path)
    accepted, message = startup_outcome(path)
    assert (rc == 0) == accepted, (case, out, message)
    if expect is None:
        assert rc == 0, out
        return
    assert rc == 2
    assert out.strip().splitlines()[-1] == f"invalid: {message}"
    assert message.startswith(f"{path}: "), message
    assert expect in message, (expect, message)


def test_yaml_to_argv_matches_ms_swift(shapes_dir, tmp_path):
    """issue 13 item 10: validate-config expands a YAML into exactly the flags `swift sft` builds (ms-swift's own
    parse_yaml_args + the argv hook), for lists, dicts, nulls, bools, numbers and unicode."""
    cfg = base_config(shapes_dir, tmp_path)
    cfg.update(system="日本語 ok", learning_rate=[0.5, 1e-6], ENV={"X_COORDEXP_TEST": "1"}, seed=None,
               custom={"user_prompt": "é", "coord_soft_ce_w1": {"enabled": True}})
    path = write_yaml(tmp_path / "run.yaml", cfg)
    assert yaml_to_argv(yaml.safe_load(path.read_text(encoding="utf-8"))) == swift_argv(path)


# --- item 1: sections without the plugin ----------------------------------------------------------------------

def test_argv_hook_stops_a_run_without_the_plugin(tmp_path):
    """issue 13 item 1: in ms-swift's sft entry script, coordexp sections without the coordexp plugin stop the run
    at start-up (exit 2) with the file and the fix, instead of ms-swift's generic remaining_argv warning."""
    import swift.cli.sft as sft_entry

    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("model: x\n")
    env = {**os.environ, "SWIFT_CONFIG_FILE": str(cfg_file)}
    proc = subprocess.run([sys.executable, sft_entry.__file__, "--model", "x", "--custom", "{}"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"invalid: {cfg_file}: the run config has the coordexp section(s) custom" in proc.stderr
    assert "external_plugins: [plugins/coordexp.py]" in proc.stderr


# --- item 5: problems inside stage2_ab.pipeline ----------------------------------------------------------------

def _stage2(objective: list) -> dict:
    return {"custom": {"trainer_variant": "stage2_two_channel"},
            "stage2_ab": {"schedule": {"b_ratio": 0.5}, "pipeline": {"objective": objective}},
            "rollout_matching": {}}


@pytest.mark.parametrize("objective,expect", [
    ([{"name": "token_ce", "weight": 1.0, "config": {"desc_weigth": 1.0}}],
     "unknown key 'stage2_ab.pipeline.objective[0].config.desc_weigth'"),
    ([{"name": "token_cee", "weight": 1.0}], "unknown objective module 'token_cee'"),
    ([{"name": "token_ce", "weight": -1.0}], "objective[0].weight"),
    ([{"name": "token_ce", "weight": float("nan")}], "objective[0].weight"),
    ([{"name": "token_ce", "weight": 10**400}], "objective[0].weight"),
    ([{"name": "token_ce", "weight": 1.0, "config": [1]}], "objective[0].config"),
])
def test_pipeline_problems_are_clean_messages_with_the_file(objective, expect, shapes_dir, tmp_path, capsys):
    """issue 13 item 5: a misspelt module config key, unknown module, weight -1 / NaN / a 400-digit integer inside
    stage2_ab.pipeline: validate-config exits 2 with `invalid: <file>: ...` (no traceback), like the plugin."""
    cfg = base_config(shapes_dir, tmp_path)
    cfg.update(_stage2(objective))
    path = write_yaml(tmp_path / "run.yaml", cfg)
    rc, out = run_validate(capsys, path)
    assert rc == 2 and "Traceback" not in out
    assert out.strip().splitlines()[-1].startswith(f"invalid: {path}: ")
    assert expect in out, out
    accepted, message = startup_outcome(path)
    assert not accepted and out.strip().splitlines()[-1] == f"invalid: {message}"


# --- item 12: messages -----------------------------------------------------------------------------------------

def test_swift_key_typo_message_is_short_file_first(shapes_dir, tmp_path, capsys):
    """issue 13 item 12: an ms-swift key typo names the file and the key first and lists only the closest keys
    (was ~8 KB with all ~500 keys, file last)."""
    cfg = base_config(shapes_dir, tmp_path)
    cfg["per_device_train_batchsize"] = 2
    path = write_yaml(tmp_path / "run.yaml", cfg)
    rc, out = run_validate(capsys, path)
    line = out.strip().splitlines()[-1]
    assert rc == 2 and line.startswith(f"invalid: {path}: unknown key 'per_device_train_batchsize'")
    assert "per_device_train_batch_size" in line
    assert len(line) < 400 and "deepspeed" not in line  # not the whole key list


def test_expand_vocab_missing_src_names_the_path(tmp_path, capsys):
    """issue 13 item 12: `expand-vocab --src /nonexistent` names the path (was a hub traceback)."""
    from coordexp_swift.tools.expand_vocab import main as expand_main

    missing = tmp_path / "nonexistent"
    assert expand_main(["--src", str(missing), "--dst", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"--src {missing}: does not exist" in err
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert expand_main(["--src", str(a_file), "--dst", str(tmp_path / "out")]) == 2
    assert "is a file, not a checkpoint directory" in capsys.readouterr().err


# --- item 7 (config side): non-UTF-8 run YAML --------------------------------------------------------------------

def test_non_utf8_yaml_names_file_and_line(tmp_path, capsys):
    """issue 13 item 7: a run YAML with a non-UTF-8 byte names the file, line and column (was "'utf-8' codec can't
    decode byte 0xff in position 474"); a UTF-8 BOM is accepted."""
    path = tmp_path / "run.yaml"
    path.write_bytes(b"model: x\nsystem: caf\xff\n")
    rc, out = run_validate(capsys, path)
    assert rc == 2
    assert f"invalid: {path}: not valid UTF-8: byte 0xff at line 2, column 12" in out
    swift = str(Path(sys.executable).with_name("swift"))  # the launcher reads the YAML before any plugin runs
    proc = subprocess.run([swift, "sft", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert f"invalid: {path}: not valid UTF-8: byte 0xff at line 2, column 12" in proc.stderr
    from coordexp_swift.config.loader import load_yaml_file

    bom = tmp_path / "bom.yaml"
    bom.write_bytes(b"\xef\xbb\xbfmodel: x\n")
    assert load_yaml_file(str(bom)) == {"model": "x"}
