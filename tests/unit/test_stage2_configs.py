"""Two-channel configs, step metrics and harness checks without a model (issue 9 items 4, 6; seed 001 2.2, 002 2.4,
7.1, 7C.5, 8.1)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from coordexp_swift.coord.vocab import VocabView
from coordexp_swift.teacher_forcing.manifest import resolve_pipeline
from coordexp_swift.tools.validate_config import validate_file
from coordexp_swift.trainers.channel_a import encode_gt_targets
from coordexp_swift.trainers.scheduler import channel_at
from coordexp_swift.trainers.step_metrics import StepMetrics

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs" / "stage2_two_channel"
GOLDEN = "7ac21c5c36850a970028595ba9863045f7a3e175914098f89e1b7ef9cf380e34"


def _ctx(name):
    return validate_file(str(CONFIGS / name))


def test_all_configs_exist_and_validate():
    """seed 002 0.4, 001 2.1: the six two-channel configs exist and pass the validate-config path."""
    names = {p.name for p in CONFIGS.glob("*.yaml")}
    assert names == {"smoke_a_only.yaml", "smoke_b_only.yaml", "smoke_mixed.yaml", "smoke_st.yaml",
                     "smoke_pipeline_explicit.yaml", "two_channel.yaml"}
    for name in names:
        assert _ctx(name).config.variant == "stage2_two_channel"


@pytest.mark.parametrize("name,ratio,first_steps", [
    ("smoke_a_only.yaml", 0.0, "AAAA"), ("smoke_b_only.yaml", 1.0, "BBBB"), ("smoke_mixed.yaml", 0.5, "ABAB"),
])
def test_smoke_routing(name, ratio, first_steps):
    """seed 001 2.2: the three smokes carry b_ratio 0 / 1 / 0.5 and route their first steps as SPEC §3.2 says."""
    sched = _ctx(name).config.stage2_ab.schedule
    assert sched.b_ratio == ratio and sched.pattern is None
    assert "".join(channel_at(s, b_ratio=sched.b_ratio) for s in range(4)) == first_steps


def test_checksums():
    """seed 002 8.1 (explicit pipeline = default manifest, checksum = golden), 002 2.4 (smoke_st sets ST modes and
    changes the checksum, not the module list)."""
    default = resolve_pipeline(_ctx("smoke_a_only.yaml").config)
    explicit = resolve_pipeline(_ctx("smoke_pipeline_explicit.yaml").config)
    st = resolve_pipeline(_ctx("smoke_st.yaml").config)
    assert default.checksum == explicit.checksum == GOLDEN
    assert explicit.authored and not default.authored
    assert st.checksum != GOLDEN and st.module_lines() == default.module_lines()
    raw = yaml.safe_load((CONFIGS / "smoke_st.yaml").read_text())["stage2_ab"]
    assert raw["coord_ctx_embed_mode"] == "st" and raw["coord_decode_mode"] == "st"


def test_real_run_template_has_only_placeholders():
    """issue 9 item 6: two_channel.yaml names no machine path; the harness keys are set."""
    cfg = yaml.safe_load((CONFIGS / "two_channel.yaml").read_text())
    assert cfg["model"] == "<STAGE1_CKPT_PATH>" and cfg["dataset"] == ["<TRAIN_JSONL>"]
    assert cfg["val_dataset"] == ["<VAL_JSONL>"] and "<RUN_NAME>" in cfg["run_name"]
    for name in CONFIGS.glob("*.yaml"):
        c = yaml.safe_load(name.read_text())
        assert c["remove_unused_columns"] is False and c["packing"] is False, name


def test_step_metrics_sparse_means_counters_internal():
    """seed 002 7.1 / 7C.5 / SPEC §8.3 via the trainer's StepMetrics: a mean key observed on 1 of 32 micro-batches
    logs its value (not 1/32 of it); mean keys are weighted by the segment count; counters sum; the internal
    log-weight key never appears; eval keys carry ms-swift's eval_ prefix."""
    m = StepMetrics()
    for i in range(32):
        obs = {"loss/geo": 2.0 if i % 2 else 4.0, "coord_diag/gt/coord_tokens_total": 8.0}
        if i == 5:
            obs["loss/coord_reg"] = 1.0
        m.observe(obs, weight=1 if i % 2 else 3)
    logs = m.logs("train")
    assert logs["loss/coord_reg"] == 1.0
    assert logs["loss/geo"] == pytest.approx((16 * 2.0 * 1 + 16 * 4.0 * 3) / (16 * 1 + 16 * 3))
    assert logs["coord_diag/gt/coord_tokens_total"] == 256.0
    assert not any("_log_weight" in k for k in logs)
    assert m.logs("train") == {}  # cleared
    m.observe({"loss/geo": 1.5}, weight=2, mode="eval")
    assert m.logs("eval") == {"eval_loss/geo": 1.5}


def test_rows_without_payload_fail_naming_the_key():
    """seed 001 1.1.2 / SPEC §3.3: a micro-batch encoded with remove_unused_columns left on (no _extra_kwargs)
    fails naming `remove_unused_columns: false`."""
    vocab = VocabView.from_parts(coord_ids=list(range(10, 1010)), pieces=[""] * 1100, eos_id=5,
                                 encode=lambda s: [])
    with pytest.raises(ValueError, match="remove_unused_columns: false"):
        encode_gt_targets([{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}], vocab)
