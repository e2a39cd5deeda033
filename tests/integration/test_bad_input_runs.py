"""Real `swift sft` runs with bad input (issue 13): validate-config and the run agree; bad samples fail or are
skipped and counted, never silently."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.integration.swift_run import SWIFT, read_logging_jsonl, tiny_stage1_config
from tests.unit.test_bad_input import AGREEMENT_TABLE

pytestmark = pytest.mark.integration

MODEL_LOAD_MARKER = "model_info"  # ms-swift logs this right after the model is built


def run_sft(cfg: dict, workdir: Path, timeout: int = 600) -> tuple[int, str, Path]:
    path = workdir / "run.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([SWIFT, "sft", str(path)], cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr, path


@pytest.mark.parametrize("case", ["lr_list", "custom_null", "no_plugin", "swift_typo", "lr_string"])
def test_real_run_agrees_with_validate_config(case, tiny_model_dir, shapes_dir, tmp_path, capsys):
    """issue 13 items 1, 2, 10, 12: a handful of the agreement-table configs through real `swift sft`: the run stops
    before the model loads with validate-config's own message (for a value ms-swift's parser rejects, with the
    same parser detail)."""
    from coordexp_swift.tools.validate_config import main as validate_main

    mutate, expect = AGREEMENT_TABLE[case]
    cfg = tiny_stage1_config(tiny_model_dir, shapes_dir, tmp_path / "out")
    mutate(cfg)
    rc, log, path = run_sft(cfg, tmp_path, timeout=300)
    assert validate_main([str(path)]) == 2
    message = capsys.readouterr().err.strip().splitlines()[-1].removeprefix("invalid: ")
    assert rc != 0 and MODEL_LOAD_MARKER not in log, log[-3000:]
    if case == "lr_string":  # rejected by ms-swift's own argparse before any plugin runs
        assert "invalid float value: 'fast'" in message and "invalid float value: 'fast'" in log
    else:
        assert message in log, (message, log[-3000:])
    assert expect in message


def _bad_sample_data(shapes_dir: Path, workdir: Path) -> list[str]:
    """shapes train records + one with a missing image (line 5) + one with 60 objects (line 6, > max_length)."""
    lines = (shapes_dir / "train.jsonl").read_text().splitlines()[:6]
    missing = json.loads(lines[0])
    missing["images"] = ["images/nope.png"]
    long = json.loads(lines[1])
    long["objects"] = long["objects"] * 60
    (workdir / "images").symlink_to(shapes_dir / "images")
    return lines[:4] + [json.dumps(missing), json.dumps(long)] + lines[4:]


def test_skip_policy_counts_missing_images_and_over_length(tiny_model_dir, shapes_dir, tmp_path):
    """issue 13 items 3 and 6: with custom.data.on_bad_sample: skip, a relative `data.jsonl#12` entry (resolved
    against the working directory) goes through the strict loader; the missing image and the over-length sample are
    logged with file, line and reason and counted (coordexp_config.json, coordexp_skipped.jsonl); training runs."""
    (tmp_path / "data.jsonl").write_text("\n".join(_bad_sample_data(shapes_dir, tmp_path)) + "\n")
    out = tmp_path / "out"
    cfg = tiny_stage1_config(tiny_model_dir, shapes_dir, out, dataset=["data.jsonl#12"], max_steps=3,
                             custom={"coord_soft_ce_w1": {"enabled": True}, "data": {"on_bad_sample": "skip"}})
    rc, log, _ = run_sft(cfg, tmp_path)
    assert rc == 0, log[-4000:]
    data = tmp_path / "data.jsonl"
    assert f"{data}:5: record 4: image file not found" in log and "(skipped: missing_image)" in log
    assert f"{data}:6: Current length of row(" in log and "(skipped: over_length" in log
    assert json.loads((out / "coordexp_config.json").read_text())["data_skipped"] == {"missing_image": 1}
    skipped = [json.loads(x) for x in (out / "coordexp_skipped.jsonl").read_text().splitlines()]
    assert {s["reason"] for s in skipped} == {"over_length"} and skipped[0]["where"] == f"{data}:6"
    assert len([r for r in read_logging_jsonl(out) if "loss" in r]) == 3


@pytest.mark.parametrize("bad", ["missing_image", "over_length"])
def test_fail_policy_stops_before_training(bad, tiny_model_dir, shapes_dir, tmp_path):
    """issue 13 item 3: by default a missing image (at data load) or an over-length sample (at its encode, which
    ms-swift would otherwise skip silently) stops the run with file, line and reason; no step is logged."""
    lines = _bad_sample_data(shapes_dir, tmp_path)
    keep = {"missing_image": [lines[0], lines[4]], "over_length": [lines[0], lines[5]]}[bad]
    (tmp_path / "data.jsonl").write_text("\n".join(keep) + "\n")
    out = tmp_path / "out"
    cfg = tiny_stage1_config(tiny_model_dir, shapes_dir, out, dataset=["data.jsonl"], max_steps=2)
    rc, log, _ = run_sft(cfg, tmp_path)
    assert rc != 0
    data = tmp_path / "data.jsonl"
    want = {"missing_image": f"{data}:2: record 1: image file not found",
            "over_length": f"{data}:2: over_length: Current length of row("}[bad]
    assert want in log, log[-4000:]
    assert not (out / "logging.jsonl").exists() or not [r for r in read_logging_jsonl(out) if "loss" in r]
