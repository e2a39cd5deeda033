"""``coordexp-swift audit-tensor-flow`` in process on the compact tiny Qwen3-VL and the shapes set (seed 001 2.3;
issue 9 item 7, issue 10 item 4; SPEC §3.3, §3.6 B4).

The repo's smoke YAMLs are used as they ship, with only the ``demo_out/`` paths pointed at the test's tiny model and
shapes set (and a shorter ``max_new_tokens`` where rollouts run); ``main()`` validates them, loads the real model
and template, encodes the rows with ms-swift's template and runs real Channel-A / Channel-B steps.
"""
from __future__ import annotations

import json

import pytest
import yaml

from coordexp_swift.tools.audit_tensor_flow import main

pytestmark = pytest.mark.integration

A_CHECKS = {"n_forwards", "cache_free", "one_token_source", "positions", "logits_aligned", "placeholders_unchanged",
            "only_slots_differ", "grad_pattern"}
B_CHECKS = {"one_forward", "forward_cache_free", "rollout_no_grad_eval", "prompt_ids_equal",
            "supervised_in_assistant_span", "fp_weight_zero"}


@pytest.fixture(scope="module")
def compact_model(tmp_path_factory):
    from coordexp_swift.tools.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("audit_compact"), seed=0, vocab="compact")


@pytest.fixture
def write_config(tmp_path, repo_root, compact_model, shapes_dir):
    def write(rel: str, **overrides) -> str:
        top = yaml.safe_load((repo_root / rel).read_text())
        top["model"] = str(compact_model)
        top["dataset"] = [str(shapes_dir / "train.jsonl")]
        top.pop("val_dataset", None)
        top["output_dir"] = str(tmp_path / "out")
        if top.get("rollout_matching"):
            top["rollout_matching"]["max_new_tokens"] = 12
        for section, values in overrides.items():
            top[section] = {**(top.get(section) or {}), **values}
        path = tmp_path / rel.replace("/", "_")
        path.write_text(yaml.safe_dump(top, sort_keys=False))
        return str(path)

    return write


def _run(capsys, argv):
    rc = main(argv)
    out = capsys.readouterr().out
    return rc, json.loads(out)


def test_a_only_smoke_all_a_checks_hold(write_config, capsys):
    """seed 001 2.3 (A half) / issue 9 item 7: ``smoke_a_only.yaml`` (b_ratio 0) routes both audited steps to A; every
    §3.3 check of ``audit_a_step`` is present and true on the real forwards (n_softctx_iter 2: 2 forwards, 2 rows);
    exit 0 and ``ok: true``."""
    cfg = write_config("configs/stage2_two_channel/smoke_a_only.yaml")
    rc, report = _run(capsys, ["--config", cfg, "--steps", "2"])
    assert rc == 0 and report["ok"] is True
    assert report["variant"] == "stage2_two_channel" and report["rows"] == 2 and report["packed"] is False
    assert [(s["step"], s["channel"]) for s in report["steps"]] == [(0, "A"), (1, "A")]
    for s in report["steps"]:
        assert set(s["checks"]) == A_CHECKS and all(s["checks"].values()) and s["failed"] == []
        assert s["counts"]["forwards"] == 2 and s["counts"]["segments"] == 2 and s["counts"]["slots"] > 0
        assert s["counts"]["placeholder_rows"] > 0  # real pixel_values: image placeholder rows were checked


def test_mixed_smoke_runs_an_a_and_a_b_step(write_config, capsys):
    """seed 001 2.3 (both halves) / issue 10 item 4: ``smoke_mixed.yaml`` (b_ratio 0.5, Bresenham: step 0 → A,
    step 1 → B) audits one A step and one real B step (hf rollouts of the random model, one teacher-forced forward);
    every A and B check holds, exit 0."""
    cfg = write_config("configs/stage2_two_channel/smoke_mixed.yaml")
    rc, report = _run(capsys, ["--config", cfg, "--steps", "2"])
    assert [(s["step"], s["channel"]) for s in report["steps"]] == [(0, "A"), (1, "B")]
    a, b = report["steps"]
    assert set(a["checks"]) == A_CHECKS and set(b["checks"]) == B_CHECKS
    assert all(a["checks"].values()) and all(b["checks"].values()), report
    assert b["counts"]["generate_calls"] >= 1 and b["counts"]["segments"] == 2
    assert b["counts"]["stage2/raw_rollouts_total"] == 2.0
    assert rc == 0 and report["ok"] is True


def test_rollout_aligned_is_b_every_step(write_config, capsys):
    """seed 001 2.3 / issue 10 item 4: a ``stage2_rollout_aligned`` config has no schedule: every audited step is a B
    step with all B checks true (``--rows 1``: one row per step)."""
    cfg = write_config("configs/stage2_rollout_aligned/smoke.yaml")
    rc, report = _run(capsys, ["--config", cfg, "--steps", "1", "--rows", "1"])
    assert rc == 0 and report["variant"] == "stage2_rollout_aligned" and report["rows"] == 1
    assert [s["channel"] for s in report["steps"]] == ["B"] and all(report["steps"][0]["checks"].values())


def test_text_only_positions_are_reported(write_config, capsys, monkeypatch):
    """seed 001 2.3 / SPEC §3.3: the audit can fail — with the positions helper patched so that the text row (row
    0) is the mRoPE temporal row (which stands still over the image patches, i.e. text positions that no longer count
    every token), a packed A step (``stage2_ab.packing: true``) reports ``positions`` as its only failed check and the
    command exits 1 with ``ok: false``."""
    import coordexp_swift.trainers.forwards as forwards

    real = forwards.positions_for

    def text_row_from_mrope(*args, **kwargs):
        pos = real(*args, **kwargs).clone()
        pos[0] = pos[1]
        return pos

    monkeypatch.setattr(forwards, "positions_for", text_row_from_mrope)
    cfg = write_config("configs/stage2_two_channel/smoke_a_only.yaml", stage2_ab={"packing": True})
    rc, report = _run(capsys, ["--config", cfg, "--steps", "1"])
    assert report["packed"] is True and report["steps"][0]["channel"] == "A"
    assert report["steps"][0]["failed"] == ["positions"] and report["steps"][0]["checks"]["positions"] is False
    assert rc == 1 and report["ok"] is False


def test_non_stage2_config_is_a_usage_error(repo_root, capsys):
    """issue 9 item 7: a Stage-1 run YAML has no Stage-2 tensor flow: exit 2 with ``invalid: <file>: ...
    trainer_variant`` on stderr (before any model is loaded)."""
    assert main(["--config", str(repo_root / "configs/demo/stage1_shapes.yaml"), "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("invalid: ") and "trainer_variant" in err, err


def test_b_prompt_mismatch_is_reported(write_config, capsys, monkeypatch):
    """seed 001 2.3 (B half) / SPEC §3.6 B4: when the generation prompt differs from the training prompt (the rollout
    prompts patched so their last id — the ``\\n`` after ``assistant`` — is replaced), the B step's own B4 guard
    raises; the audit reports that step as ``failed: ["step_ran"]`` with the error and exits 1."""
    from dataclasses import replace

    import coordexp_swift.trainers.channel_b as channel_b

    real = channel_b.rollout_prompts

    def shifted(rows):
        return [replace(p, input_ids=p.input_ids[:-1] + (p.input_ids[-2],)) for p in real(rows)]

    monkeypatch.setattr(channel_b, "rollout_prompts", shifted)
    cfg = write_config("configs/stage2_rollout_aligned/smoke.yaml")
    rc, report = _run(capsys, ["--config", cfg, "--steps", "1", "--rows", "1"])
    step = report["steps"][0]
    assert step["channel"] == "B" and step["failed"] == ["step_ran"] and "B4" in step["error"], step
    assert rc == 1 and report["ok"] is False
