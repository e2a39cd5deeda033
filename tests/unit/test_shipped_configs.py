"""Every shipped run YAML validates; broken copies fail with the dotted key (seed 000 1.8, 001 2.1)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from coordexp_swift.tools.validate_config import main as validate_main
from coordexp_swift.tools.validate_config import validate_file

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted(p for p in (REPO / "configs").rglob("*.yaml"))


def test_configs_exist():
    names = {p.relative_to(REPO / "configs").as_posix() for p in CONFIGS}
    assert {"stage1/softce_w1.yaml", "demo/stage1_shapes.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_shipped_config_validates(path):
    """seed 001 2.1: `coordexp-swift validate-config` accepts every shipped config."""
    assert validate_main([str(path)]) == 0


def test_stage1_template_has_only_placeholders():
    """seed 000 1.8: the Stage-1 template carries placeholders, not machine paths; the README has its run command."""
    cfg = yaml.safe_load((REPO / "configs/stage1/softce_w1.yaml").read_text())
    assert cfg["model"] == "<BASE_CKPT_PATH>"
    assert cfg["dataset"] == ["<TRAIN_JSONL>"] and cfg["val_dataset"] == ["<VAL_JSONL>"]
    assert "<RUN_NAME>" in cfg["run_name"]
    assert cfg["custom"]["coord_soft_ce_w1"]["enabled"] is True
    assert "swift sft configs/stage1/softce_w1.yaml" in (REPO / "README.md").read_text()


@pytest.mark.parametrize("mutate,expect", [
    (lambda c: c["custom"]["coord_soft_ce_w1"].update(w1_weigth=1.0),
     ["custom.coord_soft_ce_w1.w1_weigth", "w1_weight"]),
    (lambda c: c.update(per_device_train_batchsize=2), ["per_device_train_batchsize", "per_device_train_batch_size"]),
    (lambda c: c["custom"]["coord_soft_ce_w1"].update(temperature=0.0), ["custom.coord_soft_ce_w1.temperature"]),
    (lambda c: c["custom"].update(trainer_variant="stage2_ab_training"), ["stage2_two_channel"]),
    (lambda c: c.pop("ignore_args_error"), ["ignore_args_error: true"]),
])
def test_broken_copies_fail_with_dotted_key(tmp_path, capsys, mutate, expect):
    """seed 001 2.1 / 000 1.1: a broken copy is rejected with the dotted key (and the closest valid key)."""
    cfg = yaml.safe_load((REPO / "configs/stage1/softce_w1.yaml").read_text())
    mutate(cfg)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    assert validate_main([str(bad)]) == 2
    err = capsys.readouterr().err
    for fragment in expect:
        assert fragment in err, (fragment, err)


def test_data_check_names_file_and_line(tmp_path, shapes_dir):
    """`--data` validates the JSONL too: an out-of-range bin names file, line and object index."""
    import json

    lines = (shapes_dir / "train.jsonl").read_text().splitlines()
    rec = json.loads(lines[1])
    rec["objects"][0]["bbox_2d"][0] = -1
    lines[1] = json.dumps(rec)
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(lines) + "\n")
    (tmp_path / "images").symlink_to(shapes_dir / "images")  # validate-config --data checks image files exist
    cfg = yaml.safe_load((REPO / "configs/demo/stage1_shapes.yaml").read_text())
    cfg["dataset"] = [str(data)]
    cfg.pop("val_dataset", None)  # `val_dataset: []` is rejected by ms-swift itself (nargs "+")
    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ValueError) as exc:
        validate_file(str(run), check_data=True)
    msg = str(exc.value)
    assert f"{data}:2" in msg and "objects[0]" in msg and "norm1000 range 0..999" in msg
