"""Shared fixtures: the tiny offline Qwen3-VL and a small shapes set, built once per test session."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from coordexp_swift.tools.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_model"), seed=0)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> Path:
    from coordexp_swift.data.shapes import make_shapes

    out = tmp_path_factory.mktemp("shapes")
    make_shapes(out, n_train=24, n_val=8, seed=0)
    return out


@pytest.fixture(scope="session")
def python_bin() -> str:
    return sys.executable
