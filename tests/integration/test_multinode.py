"""Multi-node launch (issue 12 item 3): ``examples/multinode/stage1.sh`` started as two "nodes" on 127.0.0.1 (one
CPU process each, DeepSpeed ZeRO-2, gloo) logs the same Stage-1 steps as one node x 2 processes; and
``examples/multinode/two_channel.sh`` (DDP) the same Stage-2 two-channel A and B steps, with the A/B schedule and the
Channel-B seeds consistent across ranks and nodes."""
from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.integration.swift_run import REPO, SWIFT, free_port, step_records, swift_env, tiny_stage1_config

pytestmark = pytest.mark.integration
SCRIPT = REPO / "examples" / "multinode" / "stage1.sh"
LOOPBACK = "127.0.0.1"  # only loopback addresses, ever


def _launch(config: Path, env: dict, log: Path) -> subprocess.Popen:
    with log.open("w") as fh:
        return subprocess.Popen(["bash", str(SCRIPT), str(config)], cwd=config.parent, env=swift_env(env), stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _wait_all(procs: list[subprocess.Popen], logs: list[Path], timeout: int = 900) -> None:
    """Wait for every launch; if one fails or time runs out, stop the others' process groups (a lone node waits
    for its peer forever)."""
    try:
        for proc in procs:
            proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=60)
    for proc, log in zip(procs, logs):
        assert proc.returncode == 0, log.read_text()[-4000:]


def _config(tiny_model_dir, shapes_dir, work: Path, name: str) -> tuple[Path, Path]:
    work.mkdir(parents=True, exist_ok=True)
    data = work / "train8.jsonl"
    if not data.exists():
        data.write_text("".join((shapes_dir / "train.jsonl").read_text().splitlines(keepends=True)[:8]))
        (work / "images").symlink_to(shapes_dir / "images")
    out = work / name
    cfg = tiny_stage1_config(tiny_model_dir, shapes_dir, out, dataset=[str(data)], max_steps=2,
                             per_device_train_batch_size=2, external_plugins=["coordexp_swift"],
                             custom={"coord_soft_ce_w1": {"enabled": True, "text_gate_weight": 0.5}})
    cfg.pop("train_dataloader_shuffle", None)  # shuffled: the sampler's seed must agree across nodes too
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path, out


def test_two_loopback_nodes_log_the_same_steps_as_one_node(tiny_model_dir, shapes_dir, tmp_path):
    """issue 12 item 3: 2 nodes x 1 process (``NNODES=2 NODE_RANK=0|1 MASTER_ADDR=127.0.0.1``) and 1 node x 2
    processes, both through ``examples/multinode/stage1.sh`` with ZeRO-2 on CPU, log the same loss, loss terms and
    grad norm at both steps (step 2 depends on step 1's synchronised update; the data order on a shuffled sampler).
    The two launches run the same ranks over the same data with the same reductions, so the values agree to
    float32 round-off (rel 1e-6; they are bit-identical here)."""
    base = {"MASTER_ADDR": LOOPBACK, "USE_CPU": "1", "DEEPSPEED": "zero2", "SWIFT": SWIFT}
    one_cfg, one_out = _config(tiny_model_dir, shapes_dir, tmp_path / "one", "one_node")
    logs = [tmp_path / "one.log"]
    _wait_all([_launch(one_cfg, {**base, "NNODES": "1", "NODE_RANK": "0", "NPROC_PER_NODE": "2",
                                 "MASTER_PORT": str(free_port())}, logs[0])], logs)
    two_cfg, two_out = _config(tiny_model_dir, shapes_dir, tmp_path / "two", "two_nodes")
    port = str(free_port())
    logs = [tmp_path / f"node{r}.log" for r in (0, 1)]
    procs = [_launch(two_cfg, {**base, "NNODES": "2", "NODE_RANK": str(r), "NPROC_PER_NODE": "1",
                               "MASTER_PORT": port}, logs[r]) for r in (0, 1)]
    _wait_all(procs, logs)
    for r in (0, 1):
        assert f"node {r} of 2, 1 processes, master {LOOPBACK}" in logs[r].read_text()
    one, two = step_records(one_out), step_records(two_out)
    assert len(one) == len(two) == 2
    keys = sorted(k for k in one[0] if k in ("loss", "grad_norm") or k.startswith("loss/"))
    assert len(keys) >= 7
    for a, b in zip(one, two):
        for key in keys:
            assert b[key] == pytest.approx(a[key], rel=1e-6), (key, a, b)
    assert one[0]["loss"] != one[1]["loss"]  # the second step saw other samples and updated weights


# --- Stage-2 two-channel (issue 12 item 3, second half) ---------------------------------------------------------
TWO_CHANNEL = REPO / "examples" / "multinode" / "two_channel.sh"
RANK_LOG_PLUGIN = REPO / "tests" / "integration" / "rank_log_plugin.py"


@pytest.fixture(scope="module")
def compact_model_dir(tmp_path_factory):
    from coordexp_swift.tools.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("compact_model"), seed=0, vocab="compact")


def _two_channel_config(model_dir, shapes_dir, work: Path, name: str) -> tuple[Path, Path, Path]:
    """``configs/stage2_two_channel/smoke_mixed.yaml`` (b_ratio 0.5, seed 42) on 8 shapes rows, 2 optimizer steps
    (step 0 = A, step 1 = B), plus the rank-log test plugin; returns (yaml, output_dir, rank-log dir)."""
    work.mkdir(parents=True, exist_ok=True)
    data = work / "train8.jsonl"
    data.write_text("".join((shapes_dir / "train.jsonl").read_text().splitlines(keepends=True)[:8]))
    (work / "images").symlink_to(shapes_dir / "images")
    cfg = yaml.safe_load((REPO / "configs" / "stage2_two_channel" / "smoke_mixed.yaml").read_text())
    assert cfg["stage2_ab"]["schedule"] == {"b_ratio": 0.5} and cfg["seed"] == 42
    out, ranks = work / name, work / f"{name}_ranks"
    ranks.mkdir()
    cfg.update(model=str(model_dir), dataset=[str(data)], output_dir=str(out), max_steps=2,
               per_device_train_batch_size=2, external_plugins=["coordexp_swift", str(RANK_LOG_PLUGIN)])
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path, out, ranks


def _launch_two_channel(config: Path, env: dict, log: Path) -> subprocess.Popen:
    with log.open("w") as fh:
        return subprocess.Popen(["bash", str(TWO_CHANNEL), str(config)], cwd=config.parent, env=swift_env(env),
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


def _rank_lines(ranks: Path, rank: int) -> dict[str, list[str]]:
    lines = (ranks / f"rank{rank}.log").read_text().splitlines()
    return {kind: [ln for ln in lines if ln.startswith(prefix)]
            for kind, prefix in (("channel", "channel s="), ("seeds", "seeds "), ("rollout", "Channel-B rollout:"))}


def test_two_loopback_nodes_two_channel_match_one_node(compact_model_dir, shapes_dir, tmp_path):
    """issue 12 item 3 (two-channel): ``examples/multinode/two_channel.sh`` as 2 nodes x 1 process on 127.0.0.1 and
    as 1 node x 2 processes (DDP, gloo, CPU) on ``smoke_mixed.yaml`` (b_ratio 0.5) for 2 optimizer steps:

    * the logged step records (loss, every ``loss/*`` term, grad norm, the Channel-B ``rollout/*`` counters) are
      equal (rel 1e-6: same ranks, same data, same gloo reductions; greedy rollouts on identical weights);
    * the A/B schedule is rank-consistent (SPEC §3.2): every rank of both launches runs ``channel_at`` →
      step 0 A, step 1 B (b_ratio 0.5, Bresenham: step 1 is the first B step);
    * Channel-B seeds per SPEC §3.6 B0 with the *global* rank and world size 2 (seed 42, s = 1, per_device_bs 2,
      micro_idx 0), computed by hand: seed_base = norm(42 + 1·1000003) = 1000045 on every rank; request seeds
      norm(seed_base + (0·2 + rank)·2 + j) = [1000045, 1000046] on rank 0 and [1000047, 1000048] on rank 1 (a
      launcher that gave each node local rank 0 / world size 1 would repeat rank 0's seeds on node 1). Each rank's
      INFO line ``Channel-B rollout: s=1 micro_idx=0 seed_base=1000045 rank=r`` is identical between the launches.
    Per-rank lines come from ``tests/integration/rank_log_plugin.py`` (observation only)."""
    base = {"MASTER_ADDR": LOOPBACK, "USE_CPU": "1", "DEEPSPEED": "none", "SWIFT": SWIFT}
    one_cfg, one_out, one_ranks = _two_channel_config(compact_model_dir, shapes_dir, tmp_path / "one", "one_node")
    logs = [tmp_path / "one.log"]
    _wait_all([_launch_two_channel(one_cfg, {**base, "NNODES": "1", "NODE_RANK": "0", "NPROC_PER_NODE": "2",
                                             "MASTER_PORT": str(free_port()),
                                             "COORDEXP_TEST_RANK_LOG_DIR": str(one_ranks)}, logs[0])], logs)
    two_cfg, two_out, two_ranks = _two_channel_config(compact_model_dir, shapes_dir, tmp_path / "two", "two_nodes")
    port = str(free_port())
    logs = [tmp_path / f"node{r}.log" for r in (0, 1)]
    procs = [_launch_two_channel(two_cfg, {**base, "NNODES": "2", "NODE_RANK": str(r), "NPROC_PER_NODE": "1",
                                           "MASTER_PORT": port, "COORDEXP_TEST_RANK_LOG_DIR": str(two_ranks)},
                                 logs[r]) for r in (0, 1)]
    _wait_all(procs, logs)
    for r in (0, 1):
        text = logs[r].read_text()
        assert f"two_channel.sh: node {r} of 2, 1 processes, master {LOOPBACK}" in text
        # each node's local rank 0 prints its own global rank's B0 line (ms-swift INFO on local masters)
        assert f"Channel-B rollout: s=1 micro_idx=0 seed_base=1000045 rank={r} n=2 backend=hf" in text

    # the logged steps: step 0 Channel-A terms, step 1 Channel-B rollout counters; equal between the launches
    one, two = step_records(one_out), step_records(two_out)
    assert len(one) == len(two) == 2
    assert "rollout/gt_objects_total" not in one[0] and one[1]["stage2/raw_rollouts_total"] == 4  # 2 ranks x 2 rows
    for a, b in zip(one, two):
        keys = sorted(k for k in a if k in ("loss", "grad_norm") or k.startswith(("loss/", "rollout/")))
        assert len(keys) >= 5 and set(keys) <= set(b), (keys, sorted(b))
        for key in keys:
            assert b[key] == pytest.approx(a[key], rel=1e-6), (key, a, b)

    expected_seeds = {0: "seeds rank=0 world_size=2 micro_idx=0 base=1000045 request_seeds=[1000045, 1000046]",
                      1: "seeds rank=1 world_size=2 micro_idx=0 base=1000045 request_seeds=[1000047, 1000048]"}
    for ranks in (one_ranks, two_ranks):
        for r in (0, 1):
            got = _rank_lines(ranks, r)
            assert got["channel"] == ["channel s=0 -> A", "channel s=1 -> B"], (ranks, r, got)
            assert got["seeds"] == [expected_seeds[r]], (ranks, r, got)
            assert got["rollout"] == [f"Channel-B rollout: s=1 micro_idx=0 seed_base=1000045 rank={r} n=2 "
                                      "backend=hf"], (ranks, r, got)
    for r in (0, 1):
        assert _rank_lines(one_ranks, r) == _rank_lines(two_ranks, r)
