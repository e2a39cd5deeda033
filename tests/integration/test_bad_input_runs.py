"""Real `swift sft` runs with bad input (issue 13): validate-config and the run agree; bad samples fail or are
skipped and counted, never silently."""
from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import yaml

from tests.integration.swift_run import REPO, SWIFT, read_logging_jsonl, tiny_stage1_config
from tests.unit.test_bad_input import AGREEMENT_TABLE

pytestmark = pytest.mark.integration

MODEL_LOAD_MARKER = "model_info"  # ms-swift logs this right after the model is built
# ms-swift logs this once its train dataset is encoded/wrapped, before its first fetch (`_show_dataset`), the trainer
# and step 1: a run that stops without it stopped in the coordexp start-up check (or earlier)
BEFORE_TRAINING = "[INFO:swift] train_dataset:"


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
    logged with file, line and reason and counted before training (one INFO line; coordexp_config.json →
    data_skipped counts equal to coordexp_skipped.jsonl, whose path it gives); training runs on the rest."""
    (tmp_path / "data.jsonl").write_text("\n".join(_bad_sample_data(shapes_dir, tmp_path)) + "\n")
    out = tmp_path / "out"
    cfg = tiny_stage1_config(tiny_model_dir, shapes_dir, out, dataset=["data.jsonl#12"], max_steps=3,
                             custom={"coord_soft_ce_w1": {"enabled": True}, "data": {"on_bad_sample": "skip"}})
    rc, log, _ = run_sft(cfg, tmp_path)
    assert rc == 0, log[-4000:]
    data = tmp_path / "data.jsonl"
    assert f"{data}:5: record 4: image file not found" in log and "(skipped: missing_image)" in log
    assert f"{data}:6: encoded length " in log and "(skipped: over_length" in log
    summary = json.loads((out / "coordexp_config.json").read_text())["data_skipped"]
    skipped = [json.loads(x) for x in Path(summary["list"]).read_text().splitlines()]
    assert summary["list"] == str(out / "coordexp_skipped.jsonl") and summary["total"] == len(skipped)
    assert summary["counts"] == dict(Counter(s["reason"] for s in skipped))  # #12 may draw line 6 more than once
    assert summary["counts"]["missing_image"] == 1 and summary["counts"]["over_length"] >= 1
    assert {(s["reason"], s["where"]) for s in skipped} == {("missing_image", f"{data}:5"),
                                                           ("over_length", f"{data}:6")}
    assert all(s["length"] > 512 and s["max_length"] == 512 for s in skipped if s["reason"] == "over_length")
    assert (f"coordexp data: {len(skipped)} samples left out before training (custom.data.on_bad_sample: skip): "
            f"{summary['counts']}; list: {out / 'coordexp_skipped.jsonl'}") in log
    assert len([r for r in read_logging_jsonl(out) if "loss" in r]) == 3


@pytest.mark.parametrize("bad", ["missing_image", "over_length"])
def test_fail_policy_stops_before_training(bad, tiny_model_dir, shapes_dir, tmp_path):
    """issue 13 item 3: by default a missing image (at data load) or an over-length sample (in the start-up check
    that encodes every record once; ms-swift would otherwise skip it silently at its first fetch) stops the run
    with file, line and reason before the trainer is built; no step is logged."""
    lines = _bad_sample_data(shapes_dir, tmp_path)
    keep = {"missing_image": [lines[0], lines[4]], "over_length": [lines[0], lines[5]]}[bad]
    (tmp_path / "data.jsonl").write_text("\n".join(keep) + "\n")
    out = tmp_path / "out"
    cfg = tiny_stage1_config(tiny_model_dir, shapes_dir, out, dataset=["data.jsonl"], max_steps=2)
    rc, log, _ = run_sft(cfg, tmp_path)
    assert rc != 0
    data = tmp_path / "data.jsonl"
    want = {"missing_image": f"{data}:2: record 1: image file not found",
            "over_length": f"{data}:2: over_length: encoded length "}[bad]
    assert want in log, log[-4000:]
    assert BEFORE_TRAINING not in log, log[-4000:]
    assert not (out / "logging.jsonl").exists() or not [r for r in read_logging_jsonl(out) if "loss" in r]


def _one_long(shapes_dir: Path, workdir: Path, line: int, n: int = 6) -> Path:
    """``n`` shapes train records; the one at 1-based ``line`` repeats its objects 60 times (> 512 tokens)."""
    lines = (shapes_dir / "train.jsonl").read_text().splitlines()[:n]
    rec = json.loads(lines[line - 1])
    rec["objects"] = rec["objects"] * 60
    lines[line - 1] = json.dumps(rec)
    (workdir / "images").symlink_to(shapes_dir / "images")
    path = workdir / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("policy", ["fail", "skip"])
def test_over_length_with_eager_tokenize(policy, tiny_model_dir, shapes_dir, tmp_path):
    """issue 13 item 3, ``lazy_tokenize: false`` (ms-swift encodes every sample up front; the check names the ones
    it dropped): ``fail`` stops before the trainer is built naming line 4; ``skip`` trains on the other 5 records
    and counts the one left out in coordexp_config.json."""
    data = _one_long(shapes_dir, tmp_path, line=4)
    out = tmp_path / "out"
    cfg = tiny_stage1_config(tiny_model_dir, shapes_dir, out, dataset=["data.jsonl"], max_steps=2,
                             lazy_tokenize=False,
                             custom={"coord_soft_ce_w1": {"enabled": True}, "data": {"on_bad_sample": policy}})
    rc, log, _ = run_sft(cfg, tmp_path)
    if policy == "fail":
        assert rc != 0 and f"{data}:4: over_length: encoded length " in log, log[-4000:]
        assert "> max_length 512 (the run's template encoding, image tokens included); raise max_length" in log
        assert BEFORE_TRAINING not in log, log[-4000:]
        return
    assert rc == 0, log[-4000:]
    summary = json.loads((out / "coordexp_config.json").read_text())["data_skipped"]
    assert summary["counts"] == {"over_length": 1} and summary["total"] == 1
    [entry] = [json.loads(x) for x in Path(summary["list"]).read_text().splitlines()]
    assert entry["where"] == f"{data}:4" and entry["length"] > 512 and entry["max_length"] == 512
    assert len([r for r in read_logging_jsonl(out) if "loss" in r]) == 2


def test_stage2_over_length_fails_before_step_1(shapes_dir, tmp_path):
    """issue 13 item 3 (Stage-2): a two-channel run (shipped smoke_a_only.yaml, compact tiny model) whose GT target
    at line 3 is longer than max_length stops in the same start-up check, before the trainer is built, with the
    same message form; no step is logged."""
    from coordexp_swift.tools.tiny_model import build_tiny_model

    model = build_tiny_model(tmp_path / "compact_model", seed=0, vocab="compact")
    data = _one_long(shapes_dir, tmp_path, line=3)
    out = tmp_path / "out"
    cfg = yaml.safe_load((REPO / "configs" / "stage2_two_channel" / "smoke_a_only.yaml").read_text())
    cfg.update(model=str(model), dataset=[str(data)], output_dir=str(out), max_steps=2,
               external_plugins=[str(REPO / "plugins" / "coordexp.py")])
    rc, log, _ = run_sft(cfg, tmp_path)
    assert rc != 0 and f"{data}:3: over_length: encoded length " in log, log[-4000:]
    assert BEFORE_TRAINING not in log, log[-4000:]
    assert not (out / "logging.jsonl").exists() or not [r for r in read_logging_jsonl(out) if "loss" in r]
