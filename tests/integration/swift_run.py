"""Helpers to run real `swift sft` on a YAML in a subprocess and read its logs."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
SWIFT = str(Path(sys.executable).with_name("swift"))


def tiny_stage1_config(model_dir: Path, shapes_dir: Path, output_dir: Path, **overrides) -> dict:
    """A minimal Stage-1 run on the tiny model: a few CPU steps, logging every step."""
    cfg = {
        "model": str(model_dir), "model_type": "qwen3_vl", "template": "qwen3_vl", "check_model": False,
        "torch_dtype": "float32", "attn_impl": "sdpa", "tuner_type": "full",
        "dataset": [str(shapes_dir / "train.jsonl")], "split_dataset_ratio": 0.0,
        "max_length": 512, "dataset_num_proc": 1, "dataloader_num_workers": 0,
        "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1, "learning_rate": 1.0e-3,
        "max_steps": 3, "logging_steps": 1, "eval_strategy": "no", "save_strategy": "no", "report_to": ["none"],
        "seed": 7, "output_dir": str(output_dir), "add_version": False,
        "external_plugins": [str(REPO / "plugins" / "coordexp.py")], "ignore_args_error": True,
        "custom": {"coord_soft_ce_w1": {"enabled": True}},
    }
    cfg.update(overrides)
    return cfg


def run_swift_sft(cfg: dict, workdir: Path, *, extra_env: dict | None = None, timeout: int = 600,
                  extra_args: list[str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``swift sft <workdir>/run.yaml [extra_args]`` run from ``cwd`` (default: the repository root)."""
    path = workdir / "run.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = swift_env(extra_env)
    proc = subprocess.run([SWIFT, "sft", str(path), *(extra_args or [])], cwd=cwd or REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    return tolerate_exit_abort(proc, int(env.get("NPROC_PER_NODE", "1")))


#: Logged by ms-swift (local rank 0 only) when ``sft_main`` has returned (all outputs written).
MAIN_DONE = "End time of running main"
EXIT_ABORT = "terminate called without an active exception"


def tolerate_exit_abort(proc: subprocess.CompletedProcess, nproc: int) -> subprocess.CompletedProcess:
    """Known upstream exit-time abort of multi-process gloo CPU runs: after training has finished and been logged,
    one rank can die in interpreter finalisation with ``terminate called without an active exception`` (SIGABRT;
    seen in 2 of 2 clean-clone CI runs on 2026-12-04, on different 2-process tests, despite the plugin's atexit
    ``destroy_process_group``). Only that exact signature — rank 0 logged :data:`MAIN_DONE`, then the abort
    message and SIGABRT, no Python traceback before it — is returned as rc 0 (``stderr`` gets a note), so the test
    still judges the run by its outputs (every caller checks the logged steps); any other failure keeps its rc."""
    out = proc.stdout + proc.stderr
    if (proc.returncode != 0 and nproc > 1 and MAIN_DONE in out and EXIT_ABORT in out
            and "SIGABRT" in out and "Traceback" not in out.split(EXIT_ABORT)[0]):
        return subprocess.CompletedProcess(proc.args, 0, proc.stdout,
                                           proc.stderr + "\n[tests] tolerated the known exit-time gloo abort\n")
    return proc


def swift_env(extra_env: dict | None = None) -> dict:
    """The environment the helpers run ``swift`` with (offline, 2 threads), plus ``extra_env``."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "2",
            **(extra_env or {})}


def first_logged_step(output_dir: Path) -> dict:
    """The first ``logging.jsonl`` record of a training step (the one carrying ``grad_norm``)."""
    return next(r for r in read_logging_jsonl(output_dir) if "grad_norm" in r)


def step_records(output_dir: Path) -> list[dict]:
    """Every per-step record of ``logging.jsonl`` (those carrying ``loss`` and ``grad_norm``), in order."""
    return [r for r in read_logging_jsonl(output_dir) if "grad_norm" in r and "loss" in r]


def read_logging_jsonl(output_dir: Path) -> list[dict]:
    path = output_dir / "logging.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for ``MASTER_PORT``; loopback only)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
