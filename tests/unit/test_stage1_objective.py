"""Stage-1 objective end to end on synthetic tensors (SPEC §2.2-2.4; §9 rows 000 1.2, 1.3, 1.4, 1.7).

The code under test is ``coordexp_swift.losses.token_masks`` (masks), ``teacher_forcing.stage1.Stage1Objective`` (the
registry's ``token_ce`` / ``coord_reg`` modules on the ``gt`` context built from labels) and
``Stage1Trainer.compute_loss`` / ``_get_num_items_in_batch`` (one forward, weights, denominators), run on a bare
trainer instance (``__new__`` + the attributes those two methods read) so no ``swift sft`` is needed.

Golden values come from ``_reference_total``: a float64 loop over every position of every row, written straight
from the SPEC §2.3 formulas (per-position ``log_softmax`` over the gate slice, explicit CDF sums, ``logsumexp`` gates,
``F.cross_entropy`` one target at a time); only the Gaussian target uses the package's ``gaussian_soft_labels``,
whose values ``tests/unit/test_coord_dist.py`` checks independently.

Synthetic vocabulary (V = 1300): ids 0..94 are the printable ASCII characters, 96 ``<|im_end|>``, 98 the pad, and the
1000 coord ids are a random subset of 100..1299 in random order (so bin order is not id order). Targets are real
CoordJSON texts spelled one character per token, so the token-type split sees genuine desc values.
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
from collections import Counter, defaultdict

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from transformers.modeling_outputs import CausalLMOutputWithPast

from coordexp_swift.coord.codec import MAX_BIN, NUM_BINS
from coordexp_swift.coord.vocab import id_to_bin_lookup
from coordexp_swift.losses.coord_dist import gaussian_soft_labels
from coordexp_swift.config.custom import CoordSoftCEW1Config
from coordexp_swift.losses.token_masks import IGNORE_INDEX, stage1_masks
from coordexp_swift.teacher_forcing.stage1 import Stage1Objective, Stage1Step
from coordexp_swift.trainers.stage1 import Stage1Trainer

V = 1300
IM_END, IM_START, PAD = 96, 97, 98
COORD_IDS = 100 + torch.randperm(V - 100, generator=torch.Generator().manual_seed(3))[:NUM_BINS]
BIN_OF = {int(i): k for k, i in enumerate(COORD_IDS)}
LUT = id_to_bin_lookup(COORD_IDS, V)
PIECES = [chr(32 + i) if i < 95 else "?" for i in range(V)]
PIECES[95], PIECES[IM_END], PIECES[IM_START], PIECES[PAD] = "\n", "<|im_end|>", "<|im_start|>", "<pad>"
for _k, _i in enumerate(COORD_IDS.tolist()):
    PIECES[_i] = f"<|coord_{_k}|>"
_COORD_RE = re.compile(r"<\|coord_(\d+)\|>")

# Object lists of the synthetic samples; different object counts so micro-batches differ in coord counts.
SAMPLES = [
    [("red box", (0, 12, 998, 999))],
    [("blue circle", (3, 500, 501, 997))],
    [("green square", (100, 1, 300, 20)), ("a \"q\" [x]", (999, 999, 999, 999)), ("yellow", (0, 0, 2, 5))],
    [("tri", (450, 451, 452, 453)), ("tri", (10, 900, 11, 901))],
]


def _encode(text: str) -> list[int]:
    """One token per character; ``<|coord_k|>`` literals -> the coord id of bin k."""
    out: list[int] = []
    pos = 0
    for m in _COORD_RE.finditer(text):
        out += [ord(c) - 32 for c in text[pos:m.start()]]
        out.append(int(COORD_IDS[int(m.group(1))]))
        pos = m.end()
    return out + [ord(c) - 32 for c in text[pos:]]


def _coordjson(objects) -> str:
    recs = ", ".join('{"desc": "' + d.replace('"', '\\"') + '", "bbox_2d": [' +
                     ", ".join(f"<|coord_{k}|>" for k in box) + "]}" for d, box in objects)
    return '{"objects": [' + recs + "]}"


def _sample(i: int, prompt_len: int | None = None) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of sample i: -100-labelled prompt, then the CoordJSON + <|im_end|> (labels = ids)."""
    g = torch.Generator().manual_seed(100 + i)
    n = prompt_len if prompt_len is not None else 5 + 3 * i
    prompt = [IM_START] + torch.randint(0, 95, (n,), generator=g).tolist() + [95]
    target = _encode(_coordjson(SAMPLES[i])) + [IM_END]
    return prompt + target, [IGNORE_INDEX] * len(prompt) + target


def _batch(idx, samples=None) -> dict[str, torch.Tensor]:
    """Right-padded batch (pad id 98, labels -100, attention_mask 0 on pads)."""
    rows = [_sample(i) for i in idx] if samples is None else samples
    width = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), width), PAD)
    labels = torch.full((len(rows), width), IGNORE_INDEX)
    att = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (x, y) in enumerate(rows):
        ids[r, :len(x)], labels[r, :len(y)], att[r, :len(x)] = torch.tensor(x), torch.tensor(y), 1
    return {"input_ids": ids, "attention_mask": att, "labels": labels,
            "text_position_ids": torch.arange(width).expand(len(rows), width).clone()}


class TokenwiseLM(nn.Module):
    """Logits depend on each input id only (no context), so they do not change with batching or padding."""

    def __init__(self, seed: int = 0, scale: float = 4.0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.emb, self.head, self.scale = nn.Embedding(V, 16), nn.Linear(16, V), scale
        self.calls: list[set[str]] = []
        self.last_logits: torch.Tensor | None = None

    def forward(self, input_ids, **kw):
        self.calls.append({"input_ids", *kw})
        self.last_logits = self.head(torch.tanh(self.emb(input_ids))) * self.scale
        return CausalLMOutputWithPast(logits=self.last_logits)


class FixedLogitsLM(nn.Module):
    """Returns one trainable logits tensor [B, T, V] of any dtype, whatever the input."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits)
        self.calls: list[set[str]] = []

    def forward(self, input_ids, **kw):
        self.calls.append({"input_ids", *kw})
        return CausalLMOutputWithPast(logits=self.logits)


class _Meter:
    def __init__(self) -> None:
        self.values: list[float] = []

    def update(self, v) -> None:
        self.values.append(float(v))


def coord_loss(**kw) -> CoordSoftCEW1Config:
    """``custom.coord_soft_ce_w1`` with the coord loss on and the given knobs."""
    return CoordSoftCEW1Config(enabled=True, **kw)


def objective(weights: CoordSoftCEW1Config, *, enabled: bool = True) -> Stage1Objective:
    """The Stage-1 objective on the synthetic vocabulary."""
    return Stage1Objective(dataclasses.replace(weights, enabled=enabled), coord_ids=COORD_IDS, vocab_size=V,
                           eos_id=IM_END, pieces=PIECES)


def step(logits: torch.Tensor, labels: torch.Tensor, weights: CoordSoftCEW1Config, **kw) -> Stage1Step:
    """One micro-batch of the objective (micro-batch means)."""
    return objective(weights, **kw)(logits, labels)


def bare_trainer(model: nn.Module, weights: CoordSoftCEW1Config, *, enabled: bool = True) -> Stage1Trainer:
    """A ``Stage1Trainer`` without ``__init__``: exactly the attributes ``compute_loss`` and
    ``_get_num_items_in_batch`` read (single process, ms-swift's ``model_accepts_loss_kwargs=True``)."""
    t = Stage1Trainer.__new__(Stage1Trainer)
    t.args = types.SimpleNamespace(average_tokens_across_devices=True, world_size=1, n_gpu=1, process_index=0)
    t.accelerator = types.SimpleNamespace(num_processes=1, parallelism_config=None)
    t.model_accepts_loss_kwargs, t.compute_loss_func, t._loss_shifts_labels = True, None, True
    t.is_deepspeed_enabled = False
    t.model = model
    t.objective = objective(weights, enabled=enabled)
    t._window_counts = None
    t.custom_metrics = {"train": defaultdict(_Meter), "eval": defaultdict(_Meter)}
    return t


def _reference_total(logits: torch.Tensor, labels: torch.Tensor, w: CoordSoftCEW1Config,
                     enabled: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SPEC §2.3 in float64, one position at a time: (total, {term: mean}) over the rows of ``labels``."""
    z = logits.double()
    tau = w.temperature
    acc: dict[str, list[torch.Tensor]] = defaultdict(list)
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):
            y = int(labels[b, t + 1])
            if y == IGNORE_INDEX:
                continue
            row = z[b, t]
            s = row[COORD_IDS] / tau
            lse_z, lse_s = torch.logsumexp(row / tau, 0), torch.logsumexp(s, 0)
            if y in BIN_OF and enabled:
                k = BIN_OF[y]
                logp = s - lse_s
                p = logp.exp()
                q = gaussian_soft_labels(torch.tensor([k]), w.target_sigma, w.target_truncate)[0].double()
                acc["soft_ce"].append(-(q * logp).sum())
                acc["w1"].append((p.cumsum(0) - q.cumsum(0)).abs().sum() / MAX_BIN)
                acc["coord_ce"].append(-logp[k])
                acc["coord_gate"].append(torch.clamp(lse_z - lse_s, min=0.0))
            else:
                acc["ce"].append(F.cross_entropy(row[None], torch.tensor([y])))
                if y != IM_END and y not in BIN_OF:
                    p_coord = torch.exp(lse_s - lse_z)
                    acc["text_gate"].append(-torch.log(torch.clamp(1 - p_coord, 1e-6, 1.0)))
    means = {k: torch.stack(v).mean() for k, v in acc.items()}
    total = means["ce"]
    if enabled:
        for name, lam in (("coord_ce", w.ce_weight), ("soft_ce", w.soft_ce_weight), ("w1", w.w1_weight),
                          ("coord_gate", w.gate_weight), ("text_gate", w.text_gate_weight)):
            if lam > 0 and name in means:
                total = total + lam * means[name]
    return total, means


W_ALL = coord_loss(ce_weight=0.3, soft_ce_weight=0.7, w1_weight=1.5, gate_weight=0.4, text_gate_weight=0.2,
                      temperature=1.3, target_sigma=3.0, target_truncate=8)


# ----------------------------------------------------------------------------------------------- masks + base CE
def test_masks_and_base_ce_exclude_coord_targets():
    """seed 000 1.4: C = {t : L[t+1] ∈ V_c}; the base CE (base labels coord -> -100) equals F.cross_entropy over the
    non-coord supervised targets only, computed independently; with coord tokens kept it covers every target."""
    b = _batch([0, 2])
    labels = b["labels"]
    m = stage1_masks(labels, LUT, IM_END)
    # masks by brute force over positions
    for r in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):
            y = int(labels[r, t + 1])
            assert bool(m.coord[r, t]) == (y in BIN_OF)
            assert int(m.bins[r, t]) == BIN_OF.get(y, -1)
            assert bool(m.text[r, t]) == (y != IGNORE_INDEX and y not in BIN_OF)
            assert bool(m.text_gate[r, t]) == (y != IGNORE_INDEX and y not in BIN_OF and y != IM_END)
    assert int(m.coord.sum()) == 4 * (len(SAMPLES[0]) + len(SAMPLES[2]))

    logits = torch.randn(*labels.shape, V, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    base = labels.clone()
    base[torch.isin(base, COORD_IDS)] = IGNORE_INDEX  # L_base of SPEC §2.2, built independently
    want = F.cross_entropy(logits[:, :-1].reshape(-1, V), base[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)
    got = step(logits.float(), labels, coord_loss()).logged
    assert got["loss/struct_ce"] + got["loss/desc_ce"] == pytest.approx(float(want), rel=1e-6)
    assert "loss/coord_token_ce" not in got  # coord targets are not in the base CE
    want_all = F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1))
    plain = step(logits.float(), labels, coord_loss(), enabled=False).logged
    assert sum(plain[k] for k in ("loss/struct_ce", "loss/desc_ce", "loss/coord_token_ce")) == pytest.approx(
        float(want_all), rel=1e-6)
    assert not any(k.startswith("loss/coord_reg") for k in plain)


# ----------------------------------------------------------------------------------------------- coord terms
@pytest.mark.parametrize("tau,sigma,truncate", [(1.0, 2.0, None), (0.7, 1.0, 3), (2.0, 5.0, 0)])
def test_coord_terms_match_per_position_reference(tau, sigma, truncate):
    """seed 000 1.7 / 1.3: mean_C softCE, W1, coord-CE and gate equal a per-position float64 loop (softmax over the
    gate slice, explicit CDFs, LSE gate); edge bins 0/998/999 included."""
    b = _batch([0, 1, 2])
    logits = torch.randn(*b["labels"].shape, V, generator=torch.Generator().manual_seed(1)) * 4
    w = coord_loss(ce_weight=1.0, temperature=tau, target_sigma=sigma, target_truncate=truncate)
    got = step(logits, b["labels"], w).logged
    _, ref = _reference_total(logits, b["labels"], w)
    keys = {"coord_ce": "loss/coord_token_ce", "soft_ce": "loss/coord_reg/soft_ce", "w1": "loss/coord_reg/w1",
            "coord_gate": "loss/coord_reg/coord_gate"}
    assert {k for k in got if k.startswith("loss/coord")} == {*keys.values(), "loss/coord_reg"}
    for name, key in keys.items():
        assert float(got[key]) == pytest.approx(float(ref[name]), rel=1e-5, abs=1e-6), name


class _OpCounter(TorchDispatchMode):
    """Counts every aten op (by overload packet) that reaches the dispatcher."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


ALL_OFF = dict(ce_weight=0.0, soft_ce_weight=0.0, w1_weight=0.0, gate_weight=0.0, text_gate_weight=0.0)
#: The ops that averaging an already computed per-slot value, weighting it by λ and adding it to the total use
#: (sum / clamp_min + div for the mean, lift_fresh + mul for λ, add, detach for logging) — measured by making the
#: objective compute every coord term and keep only the positive ones: turning a term on then adds only these.
COMBINE_OPS = frozenset({"aten.sum", "aten.clamp_min", "aten.div", "aten.lift_fresh", "aten.mul", "aten.add",
                         "aten.detach"})


def _objective_ops(w: CoordSoftCEW1Config) -> tuple[Counter[str], dict[str, torch.Tensor]]:
    """The aten ops one objective micro-batch runs on a fixed batch, and its logged keys."""
    b = _batch([0, 2])
    logits = torch.randn(*b["labels"].shape, V, generator=torch.Generator().manual_seed(5))
    with _OpCounter() as counter:
        got = step(logits, b["labels"], w).logged
    return counter.ops, got


@pytest.mark.parametrize("field,key", [("w1_weight", "loss/coord_reg/w1"), ("gate_weight", "loss/coord_reg/coord_gate"),
                                       ("ce_weight", "loss/coord_token_ce"),
                                       ("text_gate_weight", "loss/coord_reg/text_gate")])
def test_only_positive_weights_are_computed(field, key):
    """seed 000 1.4 (SPEC §2.5): a term with weight 0 is neither computed nor returned. Computed = aten ops
    dispatched: turning the term on (λ = 0.5, soft CE on in both runs) adds ops of the term's own arithmetic, not
    only the ``COMBINE_OPS`` that weighting a value computed anyway would add; W1 is the only term with a CDF, so
    with λ_W1 = 0 no ``cumsum`` runs."""
    base = coord_loss(**{**ALL_OFF, "soft_ce_weight": 1.0})
    off, off_keys = _objective_ops(base)
    on, on_keys = _objective_ops(dataclasses.replace(base, **{field: 0.5}))
    assert _objective_ops(base)[0] == off  # the trace is deterministic
    assert {k for k in off_keys if k.startswith("loss/coord")} == {"loss/coord_reg", "loss/coord_reg/soft_ce"}
    assert key in on_keys
    extra = on - off
    assert set(extra) - COMBINE_OPS, dict(extra)
    if field == "w1_weight":
        assert off["aten.cumsum"] == 0 < on["aten.cumsum"]


# ----------------------------------------------------------------------------------------------- total loss
@pytest.mark.parametrize("w", [W_ALL, coord_loss()], ids=["all_terms", "defaults"])
def test_trainer_total_equals_spec_formula_one_forward(w):
    """seed 000 1.4: one forward per step, no labels to the model; L = CE_base + λ_ce·mean CEc + λ_soft·mean softCE
    + λ_W1·mean W1 + λ_gate·mean gate + λ_tg·mean tg (SPEC §2.3) in value and in gradient; logged terms are the
    weighted means and struct_ce + desc_ce = CE_base."""
    model = TokenwiseLM(seed=1)
    tr = bare_trainer(model, w)
    b = _batch([0, 2, 3])
    labels = b["labels"].clone()
    loss = tr.compute_loss(model, dict(b))
    assert len(model.calls) == 1
    assert not model.calls[0] & {"labels", "text_position_ids", "loss_scale", "compute_loss_func"}
    ref, means = _reference_total(model.last_logits, labels, w)
    assert float(loss.detach()) == pytest.approx(float(ref), rel=1e-5)
    g_got = torch.autograd.grad(loss, list(model.parameters()), retain_graph=True)
    g_ref = torch.autograd.grad(ref, list(model.parameters()))
    for a, r in zip(g_got, g_ref):
        torch.testing.assert_close(a.double(), r.double(), rtol=1e-4, atol=1e-7)

    logged = {k: v.values[-1] for k, v in tr.custom_metrics["train"].items()}
    expect = {"loss/coord_reg/soft_ce": w.soft_ce_weight * means["soft_ce"],
              "loss/coord_reg/w1": w.w1_weight * means["w1"],
              "loss/coord_reg/coord_gate": w.gate_weight * means["coord_gate"]}
    if w.ce_weight > 0:
        expect["loss/coord_token_ce"] = w.ce_weight * means["coord_ce"]
    if w.text_gate_weight > 0:
        expect["loss/coord_reg/text_gate"] = w.text_gate_weight * means["text_gate"]
    for key, val in expect.items():
        assert logged[key] == pytest.approx(float(val), rel=1e-5), key
    assert "loss/coord_token_ce" in logged if w.ce_weight > 0 else "loss/coord_token_ce" not in logged
    assert logged["loss/struct_ce"] + logged["loss/desc_ce"] == pytest.approx(float(means["ce"]), rel=1e-5)
    assert logged["loss/coord_reg"] == pytest.approx(sum(v for k, v in logged.items()
                                                         if k.startswith("loss/coord_reg/")), rel=1e-6)


def test_desc_ce_is_the_ce_over_desc_value_characters():
    """seed 000 1.4 (SPEC §2.5 / §4.1): loss/desc_ce = CE over the characters inside desc values (escaped quote
    included, surrounding quotes excluded), found by string search, over the shared base-CE denominator."""
    model = TokenwiseLM(seed=2)
    tr = bare_trainer(model, coord_loss())
    b = _batch([2])
    labels = b["labels"].clone()
    tr.compute_loss(model, dict(b))
    z = model.last_logits.double()[0]
    start = int((labels[0] != IGNORE_INDEX).nonzero()[0])
    pieces = [PIECES[i] for i in labels[0, start:].tolist()]
    begins = [sum(len(p) for p in pieces[:j]) for j in range(len(pieces))]
    text = "".join(pieces)
    spans = [(m.start(1), m.end(1)) for m in re.finditer(r'"desc": "((?:[^"\\]|\\.)*)"', text)]
    assert len(spans) == len(SAMPLES[2])
    desc_tokens = [start + j for j, c in enumerate(begins) if any(a <= c < e for a, e in spans)]
    ce = [F.cross_entropy(z[t - 1][None], labels[0, t][None]) for t in desc_tokens]
    n_text = sum(1 for i in labels[0, 1:].tolist() if i != IGNORE_INDEX and i not in BIN_OF)
    logged = tr.custom_metrics["train"]["loss/desc_ce"].values[-1]
    assert len(desc_tokens) == sum(len(d.replace('"', '\\"')) for d, _ in SAMPLES[2])
    assert logged == pytest.approx(float(torch.stack(ce).sum()) / n_text, rel=1e-5)


# ----------------------------------------------------------------------------------------------- edge cases
def test_empty_coord_set_gives_exact_zero_connected_to_graph():
    """seed 000 1.7 (SPEC §2.4): no coord targets -> every coord term is exactly 0.0 (fp32) and the loss is the base
    CE alone (its gradient touches only the rows predicting text targets); with no supervised target at all the
    loss is an exact 0.0 that still backpropagates (zero gradients). The trainer loss is then exactly the base CE
    token mean (+ text gate)."""
    ids = [IM_START, 40, 41, 95] + _encode('{"objects": []}') + [IM_END]
    labels = [IGNORE_INDEX] * 4 + ids[4:]
    b = _batch(None, samples=[(ids, labels)])
    m = stage1_masks(b["labels"], LUT, IM_END)
    assert int(m.coord.sum()) == 0
    logits = torch.randn(*b["labels"].shape, V, requires_grad=True)
    got = step(logits, b["labels"], W_ALL)
    coord_keys = ["loss/coord_token_ce", "loss/coord_reg/soft_ce", "loss/coord_reg/w1", "loss/coord_reg/coord_gate"]
    for key in coord_keys:
        assert got.logged[key].dtype == torch.float32 and float(got.logged[key]) == 0.0, key
    base = float(got.logged["loss/struct_ce"] + got.logged["loss/desc_ce"])
    assert float(got.loss) == pytest.approx(base + float(got.logged["loss/coord_reg/text_gate"]), rel=1e-6)
    (g,) = torch.autograd.grad(got.loss, logits)
    assert torch.count_nonzero(g[:, :-1][~m.text].abs().sum(-1)) == 0

    nothing = torch.full_like(b["labels"], IGNORE_INDEX)
    empty = step(logits, nothing, W_ALL)
    assert float(empty.loss) == 0.0 and empty.loss.requires_grad
    (g0,) = torch.autograd.grad(empty.loss, logits)
    assert torch.count_nonzero(g0) == 0

    model = TokenwiseLM(seed=3)
    w = coord_loss(soft_ce_weight=1.0, w1_weight=1.0, gate_weight=1.0)
    loss = bare_trainer(model, w).compute_loss(model, dict(b))
    ref, _ = _reference_total(model.last_logits, b["labels"], w)
    assert float(loss) == pytest.approx(float(ref), rel=1e-6)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_disabled_plain_sft_token_mean():
    """seed 000 1.4 (SPEC §2.1): coord loss disabled -> plain SFT, L = CE over every supervised target (coord ids
    included) / their count, also for a Stage-1 sample with no objects (no coord targets)."""
    w = coord_loss()
    empty = [IM_START, 40, 95] + _encode('{"objects": []}') + [IM_END]
    for samples in ([_sample(0), _sample(2)], [(empty, [IGNORE_INDEX] * 3 + empty[3:])]):
        model = TokenwiseLM(seed=4)
        b = _batch(None, samples=samples)
        loss = bare_trainer(model, w, enabled=False).compute_loss(model, dict(b))
        lg = model.last_logits.detach().double()
        want = F.cross_entropy(lg[:, :-1].reshape(-1, V), b["labels"][:, 1:].reshape(-1))  # mean over all targets
        assert float(loss) == pytest.approx(float(want), rel=1e-6)


@pytest.mark.parametrize("dtype,big", [(torch.float32, 1e30), (torch.bfloat16, 1e30), (torch.float16, 6e4)])
def test_extreme_logits_finite_loss_and_grads(dtype, big):
    """seed 000 1.2 (SPEC §2.4) in combination: fp32/bf16/fp16 logits at ±(near dtype max) everywhere give a finite
    total and finite gradients; float32 math whatever the input dtype."""
    b = _batch([0, 2])
    shape = (*b["labels"].shape, V)
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(shape, generator=g)
    flip = torch.rand(shape, generator=g)
    logits = torch.where(flip < 0.01, torch.full(shape, big), logits)
    logits = torch.where(flip > 0.99, torch.full(shape, -big), logits).to(dtype)
    model = FixedLogitsLM(logits)
    loss = bare_trainer(model, W_ALL).compute_loss(model, dict(b))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert model.logits.grad.dtype == dtype and torch.isfinite(model.logits.grad).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_nonfinite_logits_at_coord_positions_finite_loss_and_grads(dtype):
    """seed 000 1.2 (SPEC §2.4) in combination: NaN/±inf logits in the rows that predict coord tokens (sanitised
    for the coord math; those rows are not base-CE targets) leave the total and every gradient finite."""
    b = _batch([0, 2])
    m = stage1_masks(b["labels"], LUT, IM_END)
    logits = torch.randn(*b["labels"].shape, V, generator=torch.Generator().manual_seed(6))
    rows = m.coord.nonzero().tolist()
    for j, (r, t) in enumerate(rows):
        logits[r, t, (7 * j) % V] = (float("nan"), float("inf"), float("-inf"))[j % 3]
        logits[r, t, int(COORD_IDS[j])] = float("inf") if j % 2 else float("nan")
    model = FixedLogitsLM(logits.to(dtype))
    loss = bare_trainer(model, W_ALL).compute_loss(model, dict(b))
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(model.logits.grad).all()


def test_coord_terms_give_no_gradient_to_non_coord_logits():
    """seed 000 1.3 / 1.7: softCE, W1 and coord-CE read only the gate slice: zero gradient to every non-coord logit,
    values unchanged when non-coord logits at coord positions change; the gate does see them."""
    b = _batch([1, 3])
    m = stage1_masks(b["labels"], LUT, IM_END)
    logits = (torch.randn(*b["labels"].shape, V, generator=torch.Generator().manual_seed(7)) * 3).requires_grad_()
    w = coord_loss(ce_weight=1.0, soft_ce_weight=1.0, w1_weight=1.0, gate_weight=0.0)
    got = step(logits, b["labels"], w)
    (g,) = torch.autograd.grad(got.loss, logits)
    non_coord = torch.ones(V, dtype=torch.bool)
    non_coord[COORD_IDS] = False
    g_coord_rows = g[:, :-1][m.coord]  # the rows predicting coord targets (not in the base CE)
    assert torch.count_nonzero(g_coord_rows[:, non_coord]) == 0
    assert torch.count_nonzero(g_coord_rows[:, COORD_IDS]) > 0

    keys = ("loss/coord_token_ce", "loss/coord_reg/soft_ce", "loss/coord_reg/w1")
    shifted = logits.detach().clone()
    shifted[:, :-1][m.coord] += torch.where(non_coord, 50.0, 0.0)  # only non-coord logits at coord positions
    again = step(shifted, b["labels"], w).logged
    for key in keys:
        assert float(again[key]) == float(got.logged[key]), key
    gate_only = coord_loss(soft_ce_weight=0, w1_weight=0, gate_weight=1)
    gate = step(shifted, b["labels"], gate_only).logged["loss/coord_reg/coord_gate"]
    gate0 = step(logits.detach(), b["labels"], gate_only).logged["loss/coord_reg/coord_gate"]
    assert float(gate) > float(gate0) + 1.0


def test_text_gate_matches_reference():
    """seed 000 1.7 (SPEC §2.3): mean tg over supervised non-coord, non-<|im_end|> targets equals the float64
    formula."""
    b = _batch([0, 3])
    logits = torch.randn(*b["labels"].shape, V, generator=torch.Generator().manual_seed(8)) * 3
    logits[..., COORD_IDS[:50]] += 6.0  # some mass on coord ids so the gate is not ~0
    w = coord_loss(text_gate_weight=1.0, temperature=0.8)
    _, ref = _reference_total(logits, b["labels"], w)
    got = step(logits, b["labels"], w).logged["loss/coord_reg/text_gate"]
    assert float(got) == pytest.approx(float(ref["text_gate"]), rel=1e-5)


# ----------------------------------------------------------------------------------------------- denominators
def test_accumulation_window_denominators_match_one_big_batch():
    """seed 000 1.4 (SPEC §2.3 denominators): with the framework's num_items_in_batch, two micro-batches of 2
    (different coord counts) summed give the same loss and gradient as one batch of 4; the per-micro-batch-mean
    alternative would differ (so the check has power)."""
    w = W_ALL
    full = _batch([0, 1, 2, 3])
    mbs = [_batch([0, 1]), _batch([2, 3])]
    cnt = [int(stage1_masks(mb["labels"], LUT, IM_END).coord.sum()) for mb in mbs]
    assert cnt[0] != cnt[1]

    def run(batches, window: bool):
        model = TokenwiseLM(seed=9)
        tr = bare_trainer(model, w)
        n_items = tr._get_num_items_in_batch([dict(x) for x in batches], torch.device("cpu")) if window else None
        if window:
            assert n_items is not None and tr._window_counts is not None
        total = sum(tr.compute_loss(model, dict(x), num_items_in_batch=n_items) for x in batches)
        if not window:
            total = total / len(batches)  # what HF does when the loss is not normalised by num_items_in_batch
        total.backward()
        return float(total), torch.cat([p.grad.reshape(-1) for p in model.parameters()])

    l_full, g_full = run([full], True)
    l_ga, g_ga = run(mbs, True)
    assert l_ga == pytest.approx(l_full, rel=1e-6)
    torch.testing.assert_close(g_ga, g_full, rtol=1e-5, atol=1e-8)
    ref, _ = _reference_total(TokenwiseLM(seed=9)(full["input_ids"]).logits, full["labels"], w)
    assert l_full == pytest.approx(float(ref), rel=1e-5)
    l_micro, _ = run(mbs, False)
    assert not math.isclose(l_micro, l_full, rel_tol=1e-4)  # differs by ~6e-4 relative here


def test_token_accuracies_count_argmax_hits_per_target_kind():
    """seed 000 1.9 (SPEC §2.5): token_acc / coord_token_acc / text_token_acc = full-vocab argmax hits over all /
    coord / text targets; planted hits are counted exactly, a NaN row counts as a miss, ignored rows never count."""
    b = _batch([0, 2])
    labels = b["labels"]
    m = stage1_masks(labels, LUT, IM_END)
    logits = torch.zeros(*labels.shape, V)
    logits[..., 99] = 1.0  # id 99 is never a target: the default argmax misses
    rows = m.text.nonzero().tolist()[::2] + m.coord.nonzero().tolist()[::3]  # planted hits
    for r, t in rows:
        logits[r, t, int(labels[r, t + 1])] = 5.0
    r_nan, t_nan = rows[0]
    logits[r_nan, t_nan, 7] = float("nan")  # a NaN row: its planted hit is lost
    ignored = (~(m.text | m.coord)).nonzero()[0].tolist()
    logits[ignored[0], ignored[1], 3] = 9.0
    got = step(logits, labels, W_ALL).accuracies
    n_text_hit = len(m.text.nonzero().tolist()[::2]) - 1
    n_coord_hit = len(m.coord.nonzero().tolist()[::3])
    assert [int(x) for x in got["text_token_acc"]] == [n_text_hit, int(m.text.sum())]
    assert [int(x) for x in got["coord_token_acc"]] == [n_coord_hit, int(m.coord.sum())]
    assert [int(x) for x in got["token_acc"]] == [n_text_hit + n_coord_hit, int((m.text | m.coord).sum())]


def test_one_implementation_per_component():
    """seed 002 1.3 / 7B.1: Stage-1's objective is the registry's own module objects (token_ce, coord_reg) run by
    the ObjectivePipeline, and in the whole package only losses/coord_dist.py and those two modules compute token
    CE or coord-distribution losses (the trainers hold none; the coord_diag diagnostic reads log-probabilities)."""
    from pathlib import Path

    from coordexp_swift.teacher_forcing.registry import module_registry

    reg = module_registry()
    obj = objective(W_ALL)
    assert [type(m) for _, m in obj.pipeline._objective] == [reg["token_ce"].cls, reg["coord_reg"].cls]
    assert [type(m) for _, m in objective(W_ALL, enabled=False).pipeline._objective] == [reg["token_ce"].cls]
    pkg = Path(__import__("coordexp_swift").__file__).parent
    loss_call = re.compile(r"\b(cross_entropy|token_ce_rows|coord_terms|soft_ce|w1_cdf|coord_ce|coord_gate|text_gate|"
                           r"entropy|expected_l1|expected_huber|log_softmax)\(")
    users = sorted(str(p.relative_to(pkg)) for p in pkg.rglob("*.py")
                   if any(loss_call.search(line) and not line.lstrip().startswith(("def ", "#", '"'))
                          for line in p.read_text().splitlines()))
    # rollout/hf_backend.py: log-probabilities of generated tokens for detection scores (score_mode token_prob), not
    # a training loss
    assert users == ["losses/coord_dist.py", "losses/token_ce.py", "rollout/hf_backend.py",
                     "teacher_forcing/modules/coord_diag.py", "teacher_forcing/modules/coord_reg.py",
                     "teacher_forcing/modules/token_ce.py"], users
