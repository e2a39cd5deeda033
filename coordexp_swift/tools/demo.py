"""``coordexp-swift demo``: the end-to-end CPU demo (tiny model → shapes → ``swift sft`` Stage-1 → Stage-2
two-channel continuation → eval → report).

``coordexp-swift demo --out demo_out [--budget-min 10] [--quick] [--compare] [--no-stage2] [--curriculum C]``
``coordexp-swift demo --study --out study_out [--study-seeds 42,43,44]``

1. builds the compact-vocabulary tiny Qwen3-VL (``make-tiny-model --vocab compact``, the curriculum's
   ``TinyModelSpec``) into ``OUT/tiny_model``;
2. writes the synthetic shapes set of the curriculum (:data:`CURRICULA`) into ``OUT/shapes`` and validates both
   splits against SPEC §1 (Stage-1 rules);
3. Stage-1: stock ``swift sft OUT/run_softce_w1.yaml`` (a copy of ``configs/demo/stage1_shapes.yaml`` with the
   paths filled in, plugin by name) in a subprocess under a wall-clock budget: the YAML's ``max_steps`` is the
   plan; if the budget runs out first the run is stopped and the newest periodic checkpoint is used;
4. Stage-2 (unless ``--no-stage2``): stock ``swift sft OUT/run_stage2_two_channel.yaml``
   (``configs/demo/stage2_two_channel.yaml``, mixed A/B) from the Stage-1 checkpoint; its eval step logs
   ``eval_rollout/mAP`` on the val split;
5. per variant: greedy generation on the val split + COCO eval (``eval.cli.generate_and_evaluate``), the
   matched-box statistics of :func:`matched_box_stats`, overlays, curves, export with metrics + config snapshot;
6. ``OUT/REPORT.md`` (printed; only numbers measured in this run, every variant side by side) and
   ``OUT/summary.json`` (one object per variant: ``softce_w1``, ``stage2_two_channel``, ``plain_ce``).

While a run trains, :class:`ProgressLine` prints one line per logged step from its ``logging.jsonl``.
``--compare`` also trains plain CE (``custom.coord_soft_ce_w1.enabled: false``) on the same data and budget;
``--study`` runs all three variants per seed and writes ``OUT/STUDY.md`` (mean ± spread, date, machine).
``--seed`` sets ``seed`` and ``data_seed`` (ms-swift orders the data by ``data_seed``; ``seed`` alone changes
nothing in this run: docs/demo.md, Reproducibility).

Training subprocesses run with ``OMP_NUM_THREADS=1`` (``--train-threads``) and one dataloader worker: on the
shared 2-core machine this was measured 4-5x faster per step than two intra-op threads.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO / "configs" / "demo" / "stage1_shapes.yaml"
MODEL_TEMPLATE = "qwen3_vl_compact"


@dataclass(frozen=True)
class DemoData:
    """The shapes curriculum of the demo (arguments of :func:`coordexp_swift.data.shapes.make_shapes`)."""

    n_train: int
    n_val: int
    seed: int = 0
    image_size: int = 128
    min_objects: int = 1
    max_objects: int = 1
    min_size_frac: float = 0.3
    max_size_frac: float = 0.6
    colors: tuple[str, ...] = ("red", "green", "blue", "yellow")
    shapes: tuple[str, ...] = ("square",)
    background: str = "noise"


#: Full demo: one big square per image, 4 classes (the colours), 100 held-out val images (docs/demo.md: the
#: tiny model learns colour but not shape within the budget, so shape classes only cost AP).
DEMO_DATA = DemoData(n_train=4000, n_val=100)
#: ``--quick``: the same curriculum, just enough data for a smoke run.
QUICK_DATA = DemoData(n_train=64, n_val=8)
#: TinyModelSpec fields the demo changes from the defaults.
DEMO_MODEL_SPEC: dict[str, Any] = {}
QUICK_MAX_STEPS = 80
QUICK_BUDGET_MIN = 3.0


@dataclass(frozen=True)
class Variant:
    """One training run of the demo: ``name`` (file/dir suffix), ``label`` (report), YAML ``overrides``."""

    name: str
    label: str
    overrides: Mapping[str, Any]


MAIN = Variant("softce_w1", "Stage-1 softCE+W1 (+gate)", {})
PLAIN_CE = Variant("plain_ce", "plain CE (coord_soft_ce_w1.enabled: false)",
                   {"custom": {"coord_soft_ce_w1": {"enabled": False}}})
#: Stage-2 two-channel continuation of MAIN (config: ``configs/demo/stage2_two_channel.yaml``).
STAGE2 = Variant("stage2_two_channel", "Stage-1 + Stage-2 two-channel (mixed A/B)", {})
STAGE2_CONFIG = REPO / "configs" / "demo" / "stage2_two_channel.yaml"
QUICK_STAGE2_STEPS = 4
#: Default wall-clock budgets (minutes): Stage-1 + Stage-2 + build/eval stay within ~12 minutes on 2 cores.
STAGE1_BUDGET_MIN = 8.0
STAGE2_BUDGET_MIN = 3.0


@dataclass(frozen=True)
class MatchedStats:
    """Box statistics of ``gt_vs_pred`` records under class-agnostic Hungarian matching without an IoU gate
    (:func:`coordexp_swift.rollout.match.match_predictions` with ``iou_gate=0``: every pred/GT pair is a
    candidate, cost ``1 - IoU``, so each image matches ``min(#pred, #GT)`` pairs maximising total IoU).

    ``parse_rate``: fraction of records whose rollout is valid CoordJSON (not invalid, not truncated by a bad
    record or by ``max_new_tokens``); ``mean_iou``: mean IoU over matched pairs (bad boxes count, IoU 0 included);
    ``recall_iou50``: matched pairs with IoU ≥ 0.5 / #GT; ``desc_acc``: matched pairs whose normalised desc equals
    the GT's; ``coord_mae_bins``: mean |pred − GT| over the 4 coordinates of matched pairs, in bins (0..999).
    Means are ``nan`` when there is no matched pair."""

    records: int
    parse_rate: float
    gt_objects: int
    pred_objects: int
    matched: int
    mean_iou: float
    recall_iou50: float
    desc_acc: float
    coord_mae_bins: float


def matched_box_stats(records: Sequence[Mapping[str, Any]]) -> MatchedStats:
    """:class:`MatchedStats` of §7.2 ``gt_vs_pred`` records with ``coord_mode: norm1000`` (bbox GT only)."""
    from coordexp_swift.eval.coco_eval import normalize_desc
    from coordexp_swift.rollout.match import match_predictions

    ious: list[float] = []
    desc_ok: list[bool] = []
    abs_err: list[float] = []
    parsed_ok = n_gt = n_pred = 0
    for i, rec in enumerate(records):
        if rec.get("coord_mode") != "norm1000":
            raise ValueError(f"record {i}: coord_mode {rec.get('coord_mode')!r}; matched_box_stats needs norm1000")
        parse = rec.get("parse", {})
        parsed_ok += int(not (parse.get("invalid_rollout") or parse.get("truncated_record")
                              or parse.get("max_new_tokens")))
        gt = [g for g in rec["gt"] if "bbox_2d" in g]
        pred = rec["pred"]
        n_gt += len(gt)
        n_pred += len(pred)
        m = match_predictions([p["bbox_2d"] for p in pred], [g["bbox_2d"] for g in gt], iou_gate=0.0,
                              candidate_top_k=max(1, len(gt)))
        for (pi, gi), iou in zip(m.matched, m.matched_iou):
            ious.append(iou)
            desc_ok.append(normalize_desc(pred[pi]["desc"]) == normalize_desc(gt[gi]["desc"]))
            abs_err += [abs(float(a) - float(b)) for a, b in zip(pred[pi]["bbox_2d"], gt[gi]["bbox_2d"])]

    def mean(xs: Sequence[float]) -> float:
        return float(sum(xs) / len(xs)) if xs else float("nan")

    return MatchedStats(
        records=len(records), parse_rate=parsed_ok / len(records) if records else float("nan"),
        gt_objects=n_gt, pred_objects=n_pred, matched=len(ious), mean_iou=mean(ious),
        recall_iou50=sum(i >= 0.5 for i in ious) / n_gt if n_gt else float("nan"),
        desc_acc=mean([float(d) for d in desc_ok]), coord_mae_bins=mean(abs_err))


@dataclass(frozen=True)
class TrainOutcome:
    """A finished (or budget-stopped) ``swift sft`` run: ``checkpoint`` dir, steps reached / planned, wall time."""

    run_yaml: Path
    output_dir: Path
    checkpoint: Path
    steps_done: int
    max_steps: int
    wall_s: float
    stopped_by_budget: bool
    log_path: Path


@dataclass(frozen=True)
class VariantResult:
    """Everything the report needs about one trained + evaluated variant (paths are absolute)."""

    variant: Variant
    train: TrainOutcome
    eval_dir: Path
    coco: Mapping[str, float]
    stats: MatchedStats
    curves_png: Path
    overlays_png: Path
    export_dir: Path
    curves_finite: bool
    coord_curve_keys: tuple[str, ...]
    eval_rollout_map: float | None = None  # ``eval_rollout/mAP`` of the run's own eval step (Stage-2), if any


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


def build_run_config(template_yaml: str | os.PathLike[str], *, model_dir: Path, shapes_dir: Path,
                     output_dir: Path, variant: Variant, max_steps: int | None = None,
                     sets: Sequence[str] = ()) -> dict[str, Any]:
    """The demo YAML with absolute paths filled in (model, train/val JSONL, output dir, plugin) + the variant's
    overrides (+ ``max_steps`` for ``--quick``). Raises ValueError when the template lacks a required key."""
    cfg = yaml.safe_load(Path(template_yaml).read_text(encoding="utf-8"))
    if not isinstance(cfg, dict):
        raise ValueError(f"{template_yaml}: expected a YAML mapping of swift sft keys")
    for key in ("max_steps", "seed", "save_steps", "template"):
        if key not in cfg:
            raise ValueError(f"{template_yaml}: missing `{key}` (the demo needs a fixed step plan, a seed, periodic "
                             f"checkpoints and the {MODEL_TEMPLATE} template)")
    cfg.update(model=str(model_dir), dataset=[str(shapes_dir / "train.jsonl")],
               val_dataset=[str(shapes_dir / "val.jsonl")], output_dir=str(output_dir), add_version=False,
               external_plugins=["coordexp_swift"])
    cfg = set_yaml_keys(cfg, sets)
    if max_steps is not None:
        cfg["max_steps"] = max_steps
        cfg["save_steps"] = min(int(cfg["save_steps"]), max_steps)
    return _deep_merge(cfg, variant.overrides)


def _checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    out = []
    for p in output_dir.glob("checkpoint-*"):
        tail = p.name.split("-", 1)[1]
        if p.is_dir() and tail.isdigit() and (p / "model.safetensors").exists():
            out.append((int(tail), p))
    return sorted(out)


class ProgressLine:
    """Reads a run's growing ``logging.jsonl`` and prints one line per new logged step: steps, loss, coord-token
    accuracy (or the eval step's ``rollout/mAP``), rate, ETA to ``max_steps`` and the budget left."""

    def __init__(self, logging_jsonl: Path, label: str, max_steps: int, budget_s: float, stream: Any = None):
        self.path, self.label, self.max_steps, self.budget_s = logging_jsonl, label, max_steps, budget_s
        self.stream = stream if stream is not None else sys.stdout
        self.offset = 0
        self.t0 = time.monotonic()
        self.first: tuple[float, int] | None = None

    def poll(self) -> list[str]:
        """Print (and return) a line for each row appended since the last call."""
        if not self.path.is_file():
            return []
        with self.path.open("rb") as fh:
            fh.seek(self.offset)
            chunk = fh.read()
        end = chunk.rfind(b"\n")
        if end < 0:
            return []
        self.offset += end + 1
        lines = []
        for raw in chunk[:end + 1].decode("utf-8", errors="replace").splitlines():
            try:
                row = json.loads(raw)
            except json.JSONDecodeError:
                continue
            line = self.format(row)
            if line:
                print(line, file=self.stream, flush=True)
                lines.append(line)
        return lines

    def format(self, row: Mapping[str, Any]) -> str | None:
        now = time.monotonic() - self.t0
        step = row.get("global_step/max_steps", row.get("step"))
        if isinstance(step, str):
            step = int(step.split("/")[0])
        if not isinstance(step, int):
            return None
        left = max(0.0, self.budget_s - now)
        if "eval_rollout/mAP" in row:
            return (f"[{self.label}] eval at step {step}: rollout/mAP {float(row['eval_rollout/mAP']):.3f}, "
                    f"f1 {float(row.get('eval_rollout/f1', float('nan'))):.3f}")
        if "loss" not in row:
            return None
        if self.first is None:
            self.first = (now, step)
        t_first, s_first = self.first
        rate = (step - s_first) / (now - t_first) if step > s_first and now > t_first else float("nan")
        eta = (self.max_steps - step) / rate if rate == rate and rate > 0 else float("nan")
        acc = row.get("coord_token_acc")
        parts = [f"[{self.label}] step {step}/{self.max_steps}", f"loss {float(row['loss']):.3f}"]
        if acc is not None:
            parts.append(f"coord acc {float(acc):.3f}")
        parts.append(f"{rate:.2f} it/s" if rate == rate else "-- it/s")
        parts.append(f"ETA {_mmss(eta)}" if eta == eta else "ETA --")
        parts.append(f"budget left {_mmss(left)}")
        return " | ".join(parts)


def _mmss(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}m{seconds % 60:02d}s"


def run_swift_sft(run_yaml: Path, output_dir: Path, *, budget_s: float, max_steps: int, log: Path,
                  command: Sequence[str] | None = None, threads: int = 1, label: str | None = None) -> TrainOutcome:
    """``swift sft run_yaml`` (or ``command``) in a subprocess (cwd = repo, OMP_NUM_THREADS=``threads``), its own
    process group; with ``label`` a :class:`ProgressLine` prints the run's progress from ``logging.jsonl`` every few
    seconds. After ``budget_s`` seconds the group is terminated and the newest ``checkpoint-*`` is used.
    RuntimeError if it fails or leaves no checkpoint."""
    command = list(command) if command is not None else [str(Path(sys.executable).with_name("swift")), "sft",
                                                          str(run_yaml)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1"}
    t0 = time.monotonic()
    stopped = False
    with log.open("w", encoding="utf-8") as fh:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)
        monitor = ProgressLine(output_dir / "logging.jsonl", label, max_steps, budget_s) if label else None
        try:
            while True:
                try:
                    proc.wait(timeout=max(0.1, min(3.0, budget_s - (time.monotonic() - t0))))
                    break
                except subprocess.TimeoutExpired:
                    if monitor is not None:
                        monitor.poll()
                    if time.monotonic() - t0 >= budget_s:
                        raise
            if monitor is not None:
                monitor.poll()
        except subprocess.TimeoutExpired:
            stopped = True
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    wall = time.monotonic() - t0
    if not stopped and proc.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise RuntimeError(f"swift sft {run_yaml} failed (exit {proc.returncode}); log {log}:\n{tail}")
    ckpts = _checkpoints(output_dir)
    if not ckpts:
        raise RuntimeError(f"swift sft {run_yaml} left no checkpoint in {output_dir} "
                           f"({'stopped by the budget before the first save' if stopped else 'check save_*'}); "
                           f"log {log}")
    step, ckpt = ckpts[-1]
    return TrainOutcome(run_yaml, output_dir, ckpt, step, max_steps, wall, stopped, log)


def coord_curves_finite(logging_jsonl: Path) -> tuple[bool, tuple[str, ...]]:
    """(every logged ``loss`` / ``loss/*`` / ``*token_acc`` value is a finite number, the coord loss keys seen)."""
    finite = True
    keys: set[str] = set()
    for line in logging_jsonl.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        for k, v in row.items():
            if k == "loss" or k.startswith("loss/") or k.endswith("token_acc"):
                if k.startswith(("loss/coord", "coord")):
                    keys.add(k)
                if not isinstance(v, (int, float)) or not math.isfinite(float(v)):
                    finite = False
    return finite, tuple(sorted(keys))


def _export(train: TrainOutcome, out: Path, metrics: Mapping[str, Any]) -> Path:
    """Copy the checkpoint to ``out`` and write ``demo_metrics.json`` + the config snapshot beside it."""
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(train.checkpoint, out, ignore=shutil.ignore_patterns("training_args.bin", "rng_state*"))
    shutil.copy2(train.run_yaml, out / "run_config.yaml")
    for name in ("coordexp_config.json", "logging.jsonl"):
        if (train.output_dir / name).exists():
            shutil.copy2(train.output_dir / name, out / name)
    (out / "demo_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return out


def previous_run(run_yaml: Path, cfg: Mapping[str, Any], output_dir: Path, log: Path) -> TrainOutcome | None:
    """A completed earlier run of exactly ``cfg`` (same YAML, final ``checkpoint-<max_steps>`` present), else None.
    Its wall time is ms-swift's ``train_runtime`` from ``logging.jsonl``."""
    if not run_yaml.is_file() or yaml.safe_load(run_yaml.read_text(encoding="utf-8")) != cfg:
        return None
    ckpts = dict(_checkpoints(output_dir))
    final = ckpts.get(int(cfg["max_steps"]))
    logging_jsonl = output_dir / "logging.jsonl"
    if final is None or not logging_jsonl.is_file():
        return None
    runtime = 0.0
    for line in logging_jsonl.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            runtime = float(row.get("train_runtime", runtime))
    return TrainOutcome(run_yaml, output_dir, final, int(cfg["max_steps"]), int(cfg["max_steps"]), runtime, False,
                        log)


def last_logged(logging_jsonl: Path, key: str) -> float | None:
    """The last value of ``key`` in a ms-swift ``logging.jsonl`` (None when never logged)."""
    val = None
    if logging_jsonl.is_file():
        for line in logging_jsonl.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                if key in row:
                    val = float(row[key])
    return val


def build_stage2_config(template_yaml: str | os.PathLike[str], *, stage1: TrainOutcome, shapes_dir: Path,
                        output_dir: Path, max_steps: int | None = None) -> dict[str, Any]:
    """The Stage-2 two-channel demo YAML (``configs/demo/stage2_two_channel.yaml``) continuing ``stage1``: model =
    its checkpoint; data, prompt, field order, seeds from its run config; one save + eval step at ``max_steps``
    (``eval_rollout/mAP`` on the val split). Raises ValueError when the template lacks a required key."""
    cfg = yaml.safe_load(Path(template_yaml).read_text(encoding="utf-8"))
    if not isinstance(cfg, dict):
        raise ValueError(f"{template_yaml}: expected a YAML mapping of swift sft keys")
    for key in ("max_steps", "eval_steps", "save_steps", "template", "stage2_ab"):
        if key not in cfg:
            raise ValueError(f"{template_yaml}: missing `{key}` (the Stage-2 demo needs a step plan, an eval step, a "
                             f"save and the two-channel sections)")
    s1 = yaml.safe_load(stage1.run_yaml.read_text(encoding="utf-8"))
    cfg.update(model=str(stage1.checkpoint), dataset=list(s1["dataset"]), val_dataset=list(s1["val_dataset"]),
               output_dir=str(output_dir), add_version=False, external_plugins=["coordexp_swift"],
               template=s1["template"])
    for key in ("seed", "data_seed"):
        if key in s1:
            cfg[key] = s1[key]
    custom = dict(cfg.get("custom") or {})
    for key in ("user_prompt", "system_prompt", "object_field_order"):
        if key in (s1.get("custom") or {}):
            custom[key] = s1["custom"][key]
    cfg["custom"] = custom
    if max_steps is not None:
        cfg["max_steps"] = max_steps
    steps = int(cfg["max_steps"])
    cfg["eval_steps"] = steps
    cfg["save_steps"] = min(int(cfg["save_steps"]), steps)
    return cfg


def train_and_evaluate(variant: Variant, *, out: Path, template_yaml: Path, model_dir: Path, shapes_dir: Path,
                       budget_s: float, max_steps: int | None, progress: bool, reuse: bool = False,
                       sets: Sequence[str] = (), max_new_tokens: int = 256, threads: int = 1,
                       cfg: dict[str, Any] | None = None) -> VariantResult:
    """One variant end to end: YAML → ``swift sft`` → generate + COCO eval → stats, plots, export. ``cfg``: a
    ready run config (Stage-2); default: :func:`build_run_config` of ``template_yaml``."""
    from coordexp_swift.eval.cli import generate_and_evaluate
    from coordexp_swift.eval.visualize import draw_overlays, plot_training_curves

    output_dir = out / f"train_{variant.name}"
    if cfg is None:
        cfg = build_run_config(template_yaml, model_dir=model_dir, shapes_dir=shapes_dir, output_dir=output_dir,
                               variant=variant, max_steps=max_steps, sets=sets)
    run_yaml = out / f"run_{variant.name}.yaml"
    train = previous_run(run_yaml, cfg, output_dir, out / f"train_{variant.name}.log") if reuse else None
    if train is None:
        if output_dir.exists():
            shutil.rmtree(output_dir)
        run_yaml.write_text(yaml.safe_dump(cfg, sort_keys=False))
        print(f"[demo] training {variant.label}: swift sft {run_yaml} (max_steps {cfg['max_steps']}, budget "
              f"{budget_s / 60:.1f} min)", flush=True)
        train = run_swift_sft(run_yaml, output_dir, budget_s=budget_s, max_steps=int(cfg["max_steps"]),
                              log=out / f"train_{variant.name}.log", threads=threads, label=variant.name)
    else:
        print(f"[demo] reusing the finished run {output_dir} ({train.checkpoint.name})", flush=True)
    print(f"[demo] trained {train.steps_done}/{train.max_steps} steps in {train.wall_s / 60:.1f} min"
          f"{' (stopped by the time budget)' if train.stopped_by_budget else ''}", flush=True)
    eval_dir = out / f"eval_{variant.name}"
    records, result = generate_and_evaluate(train.checkpoint, shapes_dir / "val.jsonl", eval_dir,
                                            batch_size=25, max_new_tokens=max_new_tokens, progress=progress)
    stats = matched_box_stats(records)
    coco = {k: float(result["metrics"][k]) for k in ("bbox_AP", "bbox_AP50", "bbox_AP75")}
    curves_png = out / f"loss_curves_{variant.name}.png"
    plot_training_curves(output_dir / "logging.jsonl", curves_png)
    overlays_png = out / f"overlays_{variant.name}.png"
    draw_overlays(records, shapes_dir, overlays_png, max_images=16)
    finite, keys = coord_curves_finite(output_dir / "logging.jsonl")
    rollout_map = last_logged(output_dir / "logging.jsonl", "eval_rollout/mAP")
    metrics = {"variant": variant.name, **coco, **dataclasses.asdict(stats), "rollout_mAP": rollout_map,
               "steps": train.steps_done,
               "max_steps": train.max_steps, "train_wall_s": round(train.wall_s, 1),
               "stopped_by_budget": train.stopped_by_budget, "coord_curves_finite": finite,
               "eval_dir": str(eval_dir)}
    export_dir = _export(train, out / f"export_{variant.name}", metrics)
    return VariantResult(variant, train, eval_dir, coco, stats, curves_png, overlays_png, export_dir, finite, keys,
                         rollout_map)


def eval_max_new_tokens(data: DemoData) -> int:
    """Generation cap of the demo eval: 32 tokens per object at most + 32 (a CoordJSON object of the shapes set is
    ~15 tokens with the compact vocabulary), so an untrained model's runaway output stays cheap."""
    return 32 + 32 * data.max_objects


def validate_split(jsonl: Path) -> tuple[int, int]:
    """SPEC §1 validation (Stage-1 rules) of one JSONL; returns (records, objects). ValueError names file:line."""
    from coordexp_swift.data.records import iter_jsonl

    n = objs = 0
    for rec in iter_jsonl(jsonl, stage="stage1"):
        n += 1
        objs += len(rec.objects)
    if n == 0:
        raise ValueError(f"{jsonl}: no records")
    return n, objs


def _fmt(x: float, nd: int = 3) -> str:
    return "nan" if isinstance(x, float) and math.isnan(x) else f"{x:.{nd}f}"


def _rel(p: Path, out: Path) -> str:
    try:
        return str(p.resolve().relative_to(out.resolve().parent))
    except ValueError:
        return str(p)


def _bar_ok(val: float, bar: float) -> bool:
    return not math.isnan(val) and val >= bar


def variants_table(results: Sequence[VariantResult]) -> list[str]:
    """Markdown rows: every variant of this run on the same held-out split (plain CE, Stage-1, Stage-2)."""
    lines = ["| variant | steps | parse rate | mean IoU | AP50 | AP | recall@0.5 | coord-bin MAE | desc acc | "
             "rollout/mAP (eval step) |", "|---|---|---|---|---|---|---|---|---|---|"]
    order = {PLAIN_CE.name: 0, MAIN.name: 1, STAGE2.name: 2}
    for r in sorted(results, key=lambda r: order.get(r.variant.name, 9)):
        st = r.stats
        rm = "n/a" if r.eval_rollout_map is None else _fmt(r.eval_rollout_map)
        stop = " (budget stop)" if r.train.stopped_by_budget else ""
        lines.append(f"| {r.variant.label} | {r.train.steps_done}/{r.train.max_steps}{stop} | {_fmt(st.parse_rate)} | "
                     f"{_fmt(st.mean_iou)} | {_fmt(r.coco['bbox_AP50'])} | {_fmt(r.coco['bbox_AP'])} | "
                     f"{_fmt(st.recall_iou50)} | {_fmt(st.coord_mae_bins, 1)} | {_fmt(st.desc_acc)} | {rm} |")
    return lines


def render_report(results: Sequence[VariantResult], *, out: Path, data: DemoData, seed: int, model_dir: Path,
                  shapes_dir: Path, split_counts: Mapping[str, tuple[int, int]], quick: bool,
                  budget_min: float, bar: tuple[float, float, float] = (0.95, 0.50, 0.30),
                  curriculum: str = "squares", study_table: Path | None = None) -> str:
    """REPORT.md text: headline metrics of the Stage-1 variant against ``bar`` (parse rate, mean IoU, AP50), every
    variant of this run side by side, artefacts, the SPEC §9 000 2.1-2.5 checklist, and a link to the last study
    table (``study_table``, when it exists). Only numbers measured in this run are shown."""
    main = next(r for r in results if r.variant.name == MAIN.name)
    s, t = main.stats, main.train
    rows_bar = [("parse rate", s.parse_rate, bar[0]), ("mean IoU of matched boxes", s.mean_iou, bar[1]),
                ("AP50", main.coco["bbox_AP50"], bar[2])]
    lines = [
        "# coordexp-swift CPU demo report", "",
        f"{'QUICK smoke run (tiny data and budget; the bar does not apply)' if quick else 'Full demo run'} — "
        f"{time.strftime('%Y-%m-%d %H:%M')} on {platform.node() or 'this machine'} ({os.cpu_count()} CPU(s), load "
        f"{_load()}); curriculum `{curriculum}`; seed {seed}.", "",
        f"## {main.variant.label}: held-out val split ({s.records} images, {s.gt_objects} objects)", "",
        "| metric | value | demo bar |", "|---|---|---|",
    ]
    for name, val, b in rows_bar:
        ok = "" if quick else (" ✔" if _bar_ok(val, b) else " ✘")
        lines.append(f"| {name} | {_fmt(val)} | ≥ {b:.2f}{ok} |")
    lines += [
        f"| AP (COCO .50:.95) | {_fmt(main.coco['bbox_AP'])} | |",
        f"| AP75 | {_fmt(main.coco['bbox_AP75'])} | |",
        f"| desc accuracy of matched boxes | {_fmt(s.desc_acc)} | |",
        f"| coord-bin MAE of matched boxes (bins, 0..999) | {_fmt(s.coord_mae_bins, 1)} | |",
        f"| recall at IoU ≥ 0.5 (class-agnostic) | {_fmt(s.recall_iou50)} | |",
        f"| predicted / GT objects | {s.pred_objects} / {s.gt_objects} | |", "",
        "Matching: class-agnostic Hungarian assignment maximising IoU with no IoU gate (`rollout.match."
        "match_predictions`, `iou_gate=0`); mean IoU averages every matched pair, bad boxes included. AP/AP50 are "
        "COCO bbox metrics from `evaluate_records` (class-aware, constant score 1.0).", "",
        f"Training: {t.steps_done}/{t.max_steps} steps in {t.wall_s / 60:.1f} min wall clock (budget "
        f"{budget_min:g} min{'; stopped by the budget, newest checkpoint used' if t.stopped_by_budget else ''}).",
        "",
        "## Every variant of this run (same held-out split)", "",
        *variants_table(results), "",
        "`rollout/mAP` is the Stage-2 trainer's own eval step (greedy rollouts of the val split, COCO AP@[.50:.95]); "
        "the other columns come from the demo's eval (`eval_<variant>/`). Measured in this run only.", "",
        "## Artefacts", "",
        f"- resolved run config (given to `swift sft`): `{_rel(t.run_yaml, out)}`; resolved coordexp config: "
        f"`{_rel(t.output_dir / 'coordexp_config.json', out)}`",
        f"- checkpoint: `{_rel(t.checkpoint, out)}`; exported with metrics + config snapshot: "
        f"`{_rel(main.export_dir, out)}` (`demo_metrics.json`, `run_config.yaml`, `coordexp_config.json`)",
    ]
    for r in results:
        lines.append(f"- {r.variant.name}: overlays (GT green, pred red) `{_rel(r.overlays_png, out)}`, loss curves "
                     f"`{_rel(r.curves_png, out)}`, predictions + COCO files `{_rel(r.eval_dir, out)}`, training log "
                     f"`{_rel(r.train.log_path, out)}`")
    lines += [
        "",
        "## Stage-1 retraining checklist (SPEC §9, 000 2.1-2.5)", "",
        "| row | item | status |", "|---|---|---|",
        f"| 000 2.1 | base checkpoint recorded in the run config | ✔ `model: {_rel(model_dir, out)}` "
        f"(compact tiny Qwen3-VL, `coordexp_tiny_model.json` beside it) |",
        f"| 000 2.2 | train/val JSONL pass SPEC §1 validation | ✔ train {split_counts['train'][0]} records / "
        f"{split_counts['train'][1]} objects, val {split_counts['val'][0]} / {split_counts['val'][1]} "
        f"(`{_rel(shapes_dir, out)}`) |",
        f"| 000 2.3 | seeded run, resolved config saved beside outputs | ✔ seed {seed}; "
        f"`{_rel(t.output_dir / 'coordexp_config.json', out)}`, `{_rel(t.output_dir / 'args.json', out)}` |",
        f"| 000 2.4 | parse rate, NaN-free coord curves, offline eval | {'✔' if main.curves_finite else '✘'} parse "
        f"rate {_fmt(s.parse_rate)}; curves {'finite' if main.curves_finite else 'contain NaN/inf'} "
        f"({', '.join(main.coord_curve_keys) or 'no coord keys'}); eval `{_rel(main.eval_dir, out)}` |",
        f"| 000 2.5 | checkpoint exported with metrics + config snapshot | ✔ `{_rel(main.export_dir, out)}` |", "",
        "## Data", "",
        f"Synthetic shapes ({data.image_size}px, {data.min_objects}-{data.max_objects} object(s), side "
        f"{data.min_size_frac:g}-{data.max_size_frac:g} of the image, colours {', '.join(data.colors)}; shapes "
        f"{', '.join(data.shapes)}; {data.background} background): {data.n_train} train / {data.n_val} val images, "
        f"seed {data.seed}.", "",
        "## Plain CE vs Stage-1 vs Stage-1 + Stage-2 over 3 seeds", "",
    ]
    if study_table is not None and study_table.is_file():
        first = study_table.read_text(encoding="utf-8").splitlines()[:3]
        stamp = next((x for x in first if x.startswith("Measured")), "")
        lines.append(f"Last study table: `{study_table}` ({stamp.rstrip('.') or 'see the file'}).")
    else:
        lines.append("No study table yet: `make study` (= `coordexp-swift demo --study --out study_out`) writes "
                     "`study_out/STUDY.md` (mean ± spread over 3 seeds, with its date and machine).")
    return "\n".join(lines) + "\n"


def _load() -> str:
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "n/a"


@dataclass(frozen=True)
class Curriculum:
    """A named demo recipe: data, tiny-model spec changes, run-config overrides and the bar of its REPORT."""

    data: DemoData
    model_spec: Mapping[str, Any]
    sets: tuple[str, ...]
    bar: tuple[float, float, float]  # parse rate, mean IoU, AP50
    note: str
    budget_min: float = STAGE1_BUDGET_MIN  # default Stage-1 wall-clock budget (--budget-min overrides)


CURRICULA: dict[str, Curriculum] = {
    "squares": Curriculum(DEMO_DATA, {}, (), (0.95, 0.50, 0.30),
                          "one big square per image, 4 colour classes, 128 px (16 image tokens)"),
    "multi": Curriculum(
        DemoData(n_train=4000, n_val=100, max_objects=3, min_size_frac=0.2, max_size_frac=0.4,
                 shapes=("square", "triangle")),
        {"patch_size": 8, "hidden_size": 128, "head_dim": 32, "mrope_section": (8, 4, 4), "intermediate_size": 256,
         "vision_hidden_size": 128, "vision_intermediate_size": 256},
        ("custom.coord_soft_ce_w1.target_sigma=4.0", "max_steps=4000"), (0.95, 0.60, 0.50),
        "1-3 objects, square/triangle x 4 colours (8 classes), 128 px with patch 8 (64 image tokens), 1.7 M-param "
        "tiny model, target_sigma 4 (>= half the 7.87-bin pixel lattice of 128-px images), 4000 steps (~25-40 min "
        "on 2 CPU cores: docs/demo.md frontier)", budget_min=45.0),
}
DEFAULT_CURRICULUM = "squares"


def _parse_value(text: str) -> Any:
    return yaml.safe_load(text)


def apply_overrides(obj: Any, pairs: Sequence[str], what: str) -> Any:
    """``dataclasses.replace`` of a frozen dataclass with ``KEY=VALUE`` pairs (values parsed as YAML; comma lists
    become tuples for tuple fields). ValueError names the bad key and the valid ones."""
    names = {f.name: f for f in dataclasses.fields(obj)}
    changes: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or key not in names:
            raise ValueError(f"{what} override {pair!r}: expected KEY=VALUE with KEY one of {', '.join(names)}")
        current = getattr(obj, key)
        if isinstance(current, tuple):
            val = tuple(_parse_value(x) for x in raw.split(",") if x.strip())
        else:
            val = _parse_value(raw)
        changes[key] = val
    return dataclasses.replace(obj, **changes)


def set_yaml_keys(cfg: dict[str, Any], pairs: Sequence[str]) -> dict[str, Any]:
    """Apply ``dotted.key=VALUE`` pairs (values parsed as YAML) to a run config (``--set``)."""
    out = copy.deepcopy(cfg)
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {pair!r}: expected dotted.key=VALUE (e.g. learning_rate=1e-3)")
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {pair!r}: {part!r} is not a mapping in the run config")
        node[parts[-1]] = _parse_value(raw)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="coordexp-swift demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="demo_out", help="output directory (default demo_out)")
    p.add_argument("--budget-min", type=float, default=None,
                   help="wall-clock training budget of Stage-1 and plain CE in minutes (default: the curriculum's, "
                        "squares 8, multi 45; --quick: 3)")
    p.add_argument("--stage2-budget-min", type=float, default=None,
                   help="wall-clock budget of the Stage-2 continuation in minutes (default 3; --quick: 3)")
    p.add_argument("--quick", action="store_true", help="~1-2 minute smoke run (tiny data, few steps)")
    p.add_argument("--compare", action="store_true",
                   help="also train plain CE (coord_soft_ce_w1.enabled: false) on the same data and budget")
    p.add_argument("--no-stage2", action="store_true", help="skip the Stage-2 two-channel continuation")
    p.add_argument("--study", action="store_true",
                   help="plain CE vs Stage-1 vs Stage-1 + Stage-2 for each --study-seeds seed; writes OUT/STUDY.md")
    p.add_argument("--study-seeds", default="42,43,44", help="comma-separated seeds of --study (default 42,43,44)")
    p.add_argument("--study-table", default=None,
                   help="study table the REPORT links (default: study_out/STUDY.md beside OUT, if present)")
    p.add_argument("--curriculum", choices=sorted(CURRICULA), default=DEFAULT_CURRICULUM,
                   help=f"demo recipe (default {DEFAULT_CURRICULUM}); see docs/demo.md")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="demo swift sft YAML (paths are filled in)")
    p.add_argument("--stage2-config", default=str(STAGE2_CONFIG), help="Stage-2 demo YAML (paths are filled in)")
    p.add_argument("--max-steps", type=int, default=None, help="override the YAML's max_steps")
    p.add_argument("--seed", type=int, default=None,
                   help="training seed: sets `seed` and `data_seed` (ms-swift's data order) of every run")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a run-config key (dotted for nested, value parsed as YAML); repeatable")
    p.add_argument("--data", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of the shapes curriculum (DemoData; lists comma-separated); repeatable")
    p.add_argument("--model-spec", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of the tiny model's TinyModelSpec; repeatable")
    p.add_argument("--train-threads", type=int, default=1,
                   help="OMP/MKL threads of the training subprocess (default 1: measured fastest on 2 cores)")
    p.add_argument("--reuse", action="store_true",
                   help="reuse OUT/tiny_model, OUT/shapes and finished training runs of the same YAML if present")
    return p


def run_demo(args: argparse.Namespace, out: Path, seed: int | None) -> tuple[dict[str, Any], str]:
    """One demo run into ``out`` (Stage-1, optional plain CE, optional Stage-2): writes REPORT.md and summary.json,
    returns ``(summary, report)``. ValueError for bad overrides or data."""
    from coordexp_swift.data.shapes import make_shapes
    from coordexp_swift.tools.tiny_model import TinyModelSpec, build_tiny_model

    t_start = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    cur = CURRICULA[args.curriculum]
    base_data = dataclasses.replace(cur.data, n_train=QUICK_DATA.n_train, n_val=QUICK_DATA.n_val) if args.quick \
        else cur.data
    data = apply_overrides(base_data, args.data, "--data")
    spec = apply_overrides(dataclasses.replace(TinyModelSpec(), **{**DEMO_MODEL_SPEC, **cur.model_spec}),
                           args.model_spec, "--model-spec")
    sets = list(cur.sets) + list(args.set) + ([f"seed={seed}", f"data_seed={seed}"] if seed is not None else [])
    set_yaml_keys({}, sets)
    budget_min = args.budget_min if args.budget_min is not None else (
        QUICK_BUDGET_MIN if args.quick else cur.budget_min)
    s2_budget_min = args.stage2_budget_min if args.stage2_budget_min is not None else (
        QUICK_BUDGET_MIN if args.quick else STAGE2_BUDGET_MIN)
    if budget_min <= 0 or s2_budget_min <= 0:
        raise ValueError(f"--budget-min {budget_min} / --stage2-budget-min {s2_budget_min}: must be > 0")
    max_steps = args.max_steps if args.max_steps is not None else (QUICK_MAX_STEPS if args.quick else None)
    template_yaml = Path(args.config)
    shown_seed = seed if seed is not None else int(
        yaml.safe_load(template_yaml.read_text(encoding="utf-8")).get("seed", 0))

    model_dir = out / "tiny_model"
    if not (args.reuse and (model_dir / "coordexp_tiny_model.json").exists()):
        print("[demo] building the compact tiny Qwen3-VL", flush=True)
        build_tiny_model(model_dir, seed=0, vocab="compact", spec=spec)
    shapes_dir = out / "shapes"
    if not (args.reuse and (shapes_dir / "summary.json").exists()):
        print(f"[demo] writing shapes: {data.n_train} train / {data.n_val} val", flush=True)
        fields = {f.name: getattr(data, f.name) for f in dataclasses.fields(data)}
        make_shapes(str(shapes_dir), **fields)
    split_counts = {s: validate_split(shapes_dir / f"{s}.jsonl") for s in ("train", "val")}

    common = dict(out=out, template_yaml=template_yaml, model_dir=model_dir, shapes_dir=shapes_dir,
                  progress=False, reuse=args.reuse, sets=sets, max_new_tokens=eval_max_new_tokens(data),
                  threads=args.train_threads)
    results = [train_and_evaluate(MAIN, budget_s=budget_min * 60, max_steps=max_steps, **common)]
    stage2_error = None
    if not args.no_stage2:
        s2_cfg = build_stage2_config(args.stage2_config, stage1=results[0].train, shapes_dir=shapes_dir,
                                     output_dir=out / f"train_{STAGE2.name}",
                                     max_steps=QUICK_STAGE2_STEPS if args.quick else None)
        try:
            results.append(train_and_evaluate(STAGE2, budget_s=s2_budget_min * 60, max_steps=None, cfg=s2_cfg,
                                              **common))
        except RuntimeError as exc:  # e.g. budget stop before its first save: the Stage-1 report still stands
            print(f"[demo] Stage-2 continuation failed, reported without it: {exc}", file=sys.stderr, flush=True)
            stage2_error = str(exc).splitlines()[0]
    if args.compare:
        results.append(train_and_evaluate(PLAIN_CE, budget_s=budget_min * 60, max_steps=max_steps, **common))
    study_table = Path(args.study_table) if args.study_table else out.parent / "study_out" / "STUDY.md"
    report = render_report(results, out=out, data=data, seed=shown_seed, model_dir=model_dir,
                           shapes_dir=shapes_dir, split_counts=split_counts, quick=args.quick,
                           budget_min=budget_min, bar=cur.bar, curriculum=args.curriculum, study_table=study_table)
    if stage2_error:
        report += f"\nStage-2 continuation: FAILED ({stage2_error}); see `train_{STAGE2.name}.log`.\n"
    report += f"\nTotal demo wall clock: {(time.monotonic() - t_start) / 60:.1f} min (load {_load()} at the end).\n"
    (out / "REPORT.md").write_text(report, encoding="utf-8")
    summary = {r.variant.name: {**r.coco, **dataclasses.asdict(r.stats), "rollout_mAP": r.eval_rollout_map,
                                "steps": r.train.steps_done, "max_steps": r.train.max_steps,
                                "stopped_by_budget": r.train.stopped_by_budget,
                                "train_wall_s": round(r.train.wall_s, 1)}
               for r in results}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary, report


STUDY_METRICS: tuple[tuple[str, str, int], ...] = (
    ("parse_rate", "parse rate", 3), ("mean_iou", "mean IoU", 3), ("bbox_AP50", "AP50", 3), ("bbox_AP", "AP", 3),
    ("recall_iou50", "recall@0.5", 3), ("coord_mae_bins", "coord-bin MAE", 1), ("desc_acc", "desc acc", 3))


def study_table(per_seed: Mapping[int, Mapping[str, Mapping[str, Any]]], *, machine: str, when: str,
                bar: tuple[float, float, float], curriculum: str) -> str:
    """STUDY.md: mean ± half-range (and min..max) over seeds per variant and metric, plus the per-seed bar check."""
    labels = {PLAIN_CE.name: PLAIN_CE.label, MAIN.name: MAIN.label, STAGE2.name: STAGE2.label}
    seeds = sorted(per_seed)
    lines = ["# Demo study: plain CE vs Stage-1 vs Stage-1 + Stage-2", "",
             f"Measured {when} on {machine}; curriculum `{curriculum}`; seeds {', '.join(map(str, seeds))} (each "
             f"sets `seed` and `data_seed`).", "",
             "Cells: mean ± half the range over the seeds (min..max).", "",
             "| variant | " + " | ".join(h for _, h, _ in STUDY_METRICS) + " |",
             "|---|" + "---|" * len(STUDY_METRICS)]
    for name in (PLAIN_CE.name, MAIN.name, STAGE2.name):
        rows = [per_seed[s][name] for s in seeds if name in per_seed[s]]
        if not rows:
            continue
        cells = []
        for key, _, nd in STUDY_METRICS:
            vals = [float(r[key]) for r in rows if r.get(key) is not None and not math.isnan(float(r[key]))]
            if not vals:
                cells.append("nan")
                continue
            lo, hi = min(vals), max(vals)
            cells.append(f"{sum(vals) / len(vals):.{nd}f} ± {(hi - lo) / 2:.{nd}f} ({lo:.{nd}f}..{hi:.{nd}f})")
        lines.append(f"| {labels[name]} | " + " | ".join(cells) + " |")
    lines += ["", f"Bar per seed (Stage-1): parse rate ≥ {bar[0]}, mean IoU ≥ {bar[1]}, AP50 ≥ {bar[2]}.", "",
              "| seed | variant | steps | parse rate | mean IoU | AP50 | bar |", "|---|---|---|---|---|---|---|"]
    for s in seeds:
        for name, r in per_seed[s].items():
            ok = _bar_ok(r["parse_rate"], bar[0]) and _bar_ok(r["mean_iou"], bar[1]) and _bar_ok(r["bbox_AP50"], bar[2])
            lines.append(f"| {s} | {name} | {r['steps']}/{r['max_steps']} | {_fmt(r['parse_rate'])} | "
                         f"{_fmt(r['mean_iou'])} | {_fmt(r['bbox_AP50'])} | {'✔' if ok else '✘'} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    out = Path(args.out).resolve()
    try:
        if not args.study:
            _, report = run_demo(args, out, args.seed)
            print(report)
            print(f"[demo] report: {out / 'REPORT.md'}; pictures: {out}/overlays_*.png (GT green, pred red) and "
                  f"{out}/loss_curves_*.png", flush=True)
            return 0
        seeds = [int(x) for x in args.study_seeds.split(",") if x.strip()]
        args.compare = True
        per_seed: dict[int, dict[str, Any]] = {}
        for seed in seeds:
            print(f"[study] seed {seed}", flush=True)
            per_seed[seed], _ = run_demo(args, out / f"seed_{seed}", seed)
    except ValueError as exc:
        print(f"coordexp-swift demo: {exc}", file=sys.stderr)
        return 2
    machine = (f"{platform.node() or 'unknown host'} ({platform.processor() or platform.machine()}, "
               f"{os.cpu_count()} CPU(s), load {_load()} at the end)")
    table = study_table(per_seed, machine=machine, when=time.strftime("%Y-%m-%d %H:%M %Z"),
                        bar=CURRICULA[args.curriculum].bar,
                        curriculum=f"{args.curriculum}{' (--quick smoke settings)' if args.quick else ''}")
    (out / "STUDY.md").write_text(table, encoding="utf-8")
    (out / "study.json").write_text(json.dumps({str(k): v for k, v in per_seed.items()}, indent=2) + "\n")
    print(table)
    print(f"[study] table: {out / 'STUDY.md'}; per-seed reports: {out}/seed_*/REPORT.md", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
