"""Stage-1 logged values are unchanged by the move onto the registry modules (seed 002 7B.1)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.unit.stage1_scenarios import run_all
from tests.unit.test_stage1_objective import bare_trainer

FROZEN = json.loads((Path(__file__).resolve().parents[1] / "golden" / "stage1_frozen.json").read_text())


@pytest.fixture(scope="module")
def current():
    return run_all(bare_trainer)


@pytest.mark.parametrize("scenario", sorted(FROZEN))
def test_stage1_numbers_equal_the_frozen_pre_registry_values(current, scenario):
    """seed 002 7B.1: returned losses, every logged value (same key set) and the gradient probe of each scenario in
    ``tests/unit/stage1_scenarios.py`` equal the values the pre-registry Stage-1 produced (rel 1e-5: float32
    reduction order may differ)."""
    got, want = current[scenario], FROZEN[scenario]
    assert got["losses"] == pytest.approx(want["losses"], rel=1e-5)
    assert sorted(got["logged"]) == sorted(want["logged"])
    for key, values in want["logged"].items():
        assert got["logged"][key] == pytest.approx(values, rel=1e-5, abs=1e-7), key
    assert got["grad_probe"] == pytest.approx(want["grad_probe"], rel=1e-4)
