"""The naming and documentation rows of SPEC §9, checked against the files themselves: canonical names (no legacy
file names), the titles, the k/999 convention, the metric keys the code classifies vs the keys METRICS_LOSSES.md
documents, the runbook / design contents, and the README test command CI runs."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

from coordexp_swift.config import LEGACY_TRAINER_VARIANTS
from coordexp_swift.metrics.keys import FORBIDDEN_ALIASES, ROLLOUT_COUNTER_KEYS, classify

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs" / "training"


def _read(rel: str) -> str:
    return (REPO / rel).read_text(encoding="utf-8")


def test_canonical_variant_names_and_no_legacy_file_names():
    """Seed rows: seed 002 0.1, seed 002 0.2. The two Stage-2 variants are named two-channel / rollout-aligned in
    their trainer modules and config folders, and no tracked file or directory name carries a legacy variant name
    (``stage2_ab_training``, ``rollout_matching_sft``)."""
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    assert set(LEGACY_TRAINER_VARIANTS) == {"stage2_ab_training", "rollout_matching_sft"}
    for legacy in LEGACY_TRAINER_VARIANTS:
        assert not [p for p in tracked if legacy in p], legacy
    for name in ("stage2_two_channel", "stage2_rollout_aligned"):
        assert f"coordexp_swift/trainers/{name}.py" in tracked
        assert any(p.startswith(f"configs/{name}/") for p in tracked), name


def test_canonical_titles_in_docs():
    """Seed row: seed 002 0.5. The runbook carries both canonical method names."""
    runbook = (DOCS / "STAGE2_RUNBOOK.md").read_text(encoding="utf-8")
    assert runbook.splitlines()[0].endswith("Stage-2 Two-Channel Teacher Forcing (Expectation/Rollout)")
    assert "Stage-2 Rollout-Aligned Teacher Forcing" in runbook


def test_docs_state_the_k_over_999_convention():
    """Seed row: seed 001 1.8.4. README and docs/data.md state bin k <-> k/999 and the pixel rule with W-1."""
    assert "`k/999`" in _read("README.md")
    data = _read("docs/data.md")
    assert "k = round(999·c)" in data and "x = round(k/999·(W−1))" in data


def _doc_patterns(text: str) -> list[re.Pattern]:
    """Backticked key patterns of a doc as regexes: ``{a,b}`` -> one of, ``<name>`` -> one segment. Wildcard
    patterns (``rollout/*``) document a family, not a key, and are left out."""
    out = []
    for raw in set(re.findall(r"`((?:eval_)?[a-z_0-9]+(?:/[^`\s]+)*)`", text)):
        if "*" in raw:
            continue
        rx = re.escape(raw)
        rx = re.sub(r"\\\{([^}]*)\\\}", lambda m: "(" + "|".join(m.group(1).split(",")) + ")", rx)
        out.append(re.compile(re.sub(r"<[^>]*>", "[^/]+", rx) + "$"))
    return out


def test_every_emitted_metric_key_is_documented():
    """Seed row: seed 002 8.3 (schema vs doc). Every key of the code's schema that a trainer logs (the §8.1 rollout
    counters of ``metrics.keys`` and the §8.2 loss / diagnostic / timing / packing keys) is documented in
    METRICS_LOSSES.md — literally or by a documented pattern — and classifies under the naming contract; the
    forbidden aliases are documented as such and are no valid key."""
    text = (DOCS / "METRICS_LOSSES.md").read_text(encoding="utf-8")
    patterns = _doc_patterns(text)
    emitted = list(ROLLOUT_COUNTER_KEYS) + [
        "loss", "loss/struct_ce", "loss/desc_ce", "loss/coord_token_ce", "loss/coord_reg", "loss/geo",
        "loss/struct_ce/self_context", "loss/geo/bbox_smoothl1", "loss/geo/bbox_ciou", "loss/coord_reg/soft_ce",
        "loss/coord_reg/w1", "coord_diag/gt/coord_tokens_total", "coord_diag/gt/p_gt_mean",
        "coord_diag/self_context/expected_bin_mae_mean", "rollout/precision", "rollout/recall", "rollout/f1",
        "rollout/fn_appended_per_sample_mean", "eval_rollout/mAP", "time/rollout_generate_s", "time/rollout_parse_match_s",
        "time/forward_s", "packing/fill_ratio_mean", "packing/segments_total", "stage2/b_ratio_realized",
    ]
    for key in emitted:
        classify(key.removeprefix("eval_"))  # raises on a key outside the naming contract
        assert f"`{key}`" in text or any(p.match(key) for p in patterns), key
    for alias in FORBIDDEN_ALIASES:
        assert f"`{alias}`" in text, alias


def test_runbook_and_design_contents():
    """Seed rows: seed 002 8.4, seed 002 8.5, seed 002 8.6. The runbook holds the module -> loss map, SmoothL1 +
    CIoU as the geometry default and the scheduler formula; DESIGN.md explains Bresenham routing and the realized
    ratio; the runbook documents ``rollout/mAP`` under ``eval_detection.enabled``."""
    runbook = (DOCS / "STAGE2_RUNBOOK.md").read_text(encoding="utf-8")
    assert re.search(r"^## Objective: module → loss map", runbook, re.M)
    assert "SmoothL1" in runbook and "CIoU" in runbook
    assert "floor((s+1)·r) > floor(s·r)" in runbook
    design = (DOCS / "DESIGN.md").read_text(encoding="utf-8")
    assert re.search(r"^## Bresenham routing and the realized ratio", design, re.M)
    assert "stage2/b_ratio_realized" in design
    assert "eval_rollout/mAP" in runbook or "rollout/mAP" in runbook
    assert "eval_detection.enabled" in runbook


def test_readme_test_command_is_what_ci_runs():
    """Seed row: seed 002 9.4 (the README's test command passes on a fresh CPU machine: CI runs ``.ci/run`` on a
    clean clone). The README's test command is ``make test``; ``.ci/run`` runs exactly that; the Makefile's ``test``
    target builds the pinned .venv first (its stamp) and then runs the whole suite."""
    assert re.search(r"^make test\b", _read("README.md"), re.M)
    ci = [ln for ln in _read(".ci/run").splitlines() if ln.strip() and not ln.startswith("#")]
    assert ci[-1].strip() == "make test"
    make = _read("Makefile")
    assert re.search(r"^test: \$\(STAMP\)\n\t\$\(BIN\)/python -m pytest -q -ra$", make, re.M)
