"""Host-sync audit of a training micro-step (issue 8 item 5): what, after the forward is queued, makes the host wait
for the device.

:class:`SyncCounter` is a ``TorchDispatchMode`` that records every **sync-class** op issued inside it:

- ``aten._local_scalar_dense`` — ``.item()``, ``float(t)``, ``int(t)``, ``bool(t)`` (also ``if t:``);
- ``aten.nonzero``, ``aten.masked_select``, ``aten.unique*``, ``aten.repeat_interleave`` with a tensor of repeats —
  ops whose OUTPUT SIZE depends on device values;
- ``aten.index`` / ``aten.index_put`` / ``aten._index_put_impl_`` with a boolean index (= a ``nonzero``);
- device-to-host copies: ``aten._to_copy`` / ``aten.copy_`` from a non-CPU tensor into a CPU tensor.

On a CPU-only run no tensor is "on the device", so the last class cannot occur, and host reads of CPU tensors that
bypass the dispatcher (``.tolist()``, ``.numpy()``, ``np.asarray(t)`` and ``.cpu()``) are invisible to a dispatch
mode. The counter therefore also wraps those four ``torch.Tensor`` methods while it is active and records each
call: in a GPU run each of them is a device-to-host copy (``.cpu()``/``.tolist()``/``.numpy()`` of a CUDA tensor
synchronise). ``.to(device)`` is not counted: moving a tensor to the device it already lives on is a no-op on
every backend, and a real device-to-host ``.to("cpu")`` shows up as ``aten._to_copy`` on GPU. Together this
over-approximates the syncs of a GPU run of the same code (a CPU-side ``.tolist()`` of a host-built value would be
counted although it costs nothing on GPU), so a CPU count is an upper bound. On a GPU machine confirm with
``torch.cuda.set_sync_debug_mode("warn")``.

:func:`stage1_scenario` builds a representative Stage-1 micro-step (synthetic 1,300-id vocabulary, a padded batch of
CoordJSON answers, a linear "LM head" whose logits the objective reads); ``run`` executes objective + backward +
the caller's logging under the counter. Channel-A / Channel-B steps plug in the same way: a scenario whose
``build()`` does the pre-forward work and whose ``step(batch, logits)`` is counted.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["SyncCounter", "Stage1Scenario", "count_syncs", "stage1_scenario"]

_aten = torch.ops.aten
_ALWAYS = {
    _aten._local_scalar_dense.default, _aten.nonzero.default, _aten.nonzero.out, _aten.masked_select.default,
    _aten._unique.default, _aten._unique2.default, _aten.unique_dim.default, _aten.unique_consecutive.default,
    _aten.repeat_interleave.Tensor, _aten.repeat_interleave.self_Tensor,
}
_INDEXING = {_aten.index.Tensor, _aten.index_put.default, _aten.index_put_.default, _aten._index_put_impl_.default}
_COPIES = {_aten._to_copy.default, _aten.copy_.default}
_HOST_READS = ("tolist", "numpy", "__array__", "cpu")


def _is_host(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.device.type == "cpu"


class SyncCounter(TorchDispatchMode):
    """Records sync-class ops (see the module docstring) in :attr:`ops` (names, in issue order)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []
        self._saved: dict[str, Any] = {}
        self._host_read_depth = 0  # > 0 inside a wrapped host read: its own D2H copy is that read, not another

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: D105
        kwargs = kwargs or {}
        name = None
        if func in _ALWAYS:
            name = str(func.overloadpacket.__name__)
        elif func in _INDEXING:
            idx = args[1] if len(args) > 1 else kwargs.get("indices", ())
            if any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in (idx or ())):
                name = f"{func.overloadpacket.__name__}(bool index)"
        elif func in _COPIES:
            src = args[1] if func is _aten.copy_.default else args[0]
            dst_cpu = (_is_host(args[0]) if func is _aten.copy_.default
                       else str(kwargs.get("device", src.device)) == "cpu")
            if isinstance(src, torch.Tensor) and not _is_host(src) and dst_cpu and not self._host_read_depth:
                name = "device_to_host_copy"
        if name is not None:
            self.ops.append(name)
        return func(*args, **kwargs)

    def __enter__(self):
        for meth in _HOST_READS:
            orig = getattr(torch.Tensor, meth)
            self._saved[meth] = torch.Tensor.__dict__.get(meth)  # None: inherited from the C base class

            def wrapped(t, *a, __orig=orig, __name=meth, **k):
                self.ops.append(f"Tensor.{__name}")
                self._host_read_depth += 1
                try:
                    return __orig(t, *a, **k)
                finally:
                    self._host_read_depth -= 1

            setattr(torch.Tensor, meth, wrapped)
        return super().__enter__()

    def __exit__(self, *exc):
        out = super().__exit__(*exc)
        for meth, orig in self._saved.items():
            if orig is None:
                delattr(torch.Tensor, meth)
            else:
                setattr(torch.Tensor, meth, orig)
        self._saved.clear()
        return out

    @property
    def count(self) -> int:
        return len(self.ops)


@contextlib.contextmanager
def count_syncs() -> Iterator[SyncCounter]:
    """``with count_syncs() as c: ...`` then ``c.count`` / ``c.ops``."""
    counter = SyncCounter()
    with counter:
        yield counter


# ----------------------------------------------------------------------------------------------- Stage-1 scenario
_V = 1300
_IM_END, _IM_START, _PAD, _IGNORE = 96, 97, 98, -100
_SAMPLES = [
    [("red box", (0, 12, 998, 999))],
    [("green square", (100, 1, 300, 20)), ("a \"q\" [x]", (999, 999, 999, 999)), ("yellow", (0, 0, 2, 5))],
    [("tri", (450, 451, 452, 453)), ("tri", (10, 900, 11, 901))],
]


@dataclass
class Stage1Scenario:
    """A Stage-1 micro-step: ``objective`` (``Stage1Objective``), host ``labels [B, T]``, a ``head`` producing the
    logits from fixed hidden states, and ``window_counts`` (or ``None``)."""

    objective: Any
    labels: torch.Tensor
    hidden: torch.Tensor
    head: torch.nn.Linear
    window_counts: Optional[torch.Tensor]
    extra: dict = field(default_factory=dict)

    def build(self):
        """Pre-forward work (not counted): the host-built batch, shipped to the device."""
        return self.objective.batch(self.labels)

    def forward(self) -> torch.Tensor:
        """The "forward" whose logits the objective reads: ``[B, T, V]``."""
        return self.head(self.hidden)

    def run(self, log: Callable[[Any], None]) -> SyncCounter:
        """Build the batch and run the forward, then count objective + backward + ``log(step)``."""
        batch = self.build()
        logits = self.forward()
        self.head.zero_grad(set_to_none=True)
        with count_syncs() as counter:
            step = self.objective(logits, batch=batch, window_counts=self.window_counts)
            step.loss.backward()
            log(step)
        return counter


def stage1_scenario(*, coord_enabled: bool = True, window: bool = True, text_gate: float = 0.5,
                    ce_weight: float = 0.5, seed: int = 0) -> Stage1Scenario:
    """A padded batch of 3 CoordJSON answers on a synthetic vocabulary (ids 0..94 printable chars, 96
    ``<|im_end|>``, 1000 coord ids among 100..1299), default Stage-1 weights plus ``text_gate``/``ce_weight``."""
    from coordexp_swift.config.custom import CoordSoftCEW1Config
    from coordexp_swift.coord.codec import NUM_BINS
    from coordexp_swift.coord.vocab import VocabView
    from coordexp_swift.teacher_forcing.stage1 import Stage1Objective

    g = torch.Generator().manual_seed(seed)
    coord_ids = 100 + torch.randperm(_V - 100, generator=g)[:NUM_BINS]
    pieces = [chr(32 + i) if i < 95 else "?" for i in range(_V)]
    pieces[95], pieces[_IM_END], pieces[_IM_START], pieces[_PAD] = "\n", "<|im_end|>", "<|im_start|>", "<pad>"
    for k, i in enumerate(coord_ids.tolist()):
        pieces[i] = f"<|coord_{k}|>"

    def encode(text: str) -> list[int]:
        import re
        out, pos = [], 0
        for m in re.finditer(r"<\|coord_(\d+)\|>", text):
            out += [ord(c) - 32 for c in text[pos:m.start()]]
            out.append(int(coord_ids[int(m.group(1))]))
            pos = m.end()
        return out + [ord(c) - 32 for c in text[pos:]]

    vocab = VocabView.from_parts(coord_ids=coord_ids, pieces=pieces, eos_id=_IM_END, encode=encode, vocab_size=_V)
    rows = []
    for i, objs in enumerate(_SAMPLES):
        text = '{"objects": [' + ", ".join('{"desc": "' + d.replace('"', '\\"') + '", "bbox_2d": ['
                                           + ", ".join(f"<|coord_{k}|>" for k in box) + "]}"
                                           for d, box in objs) + "]}"
        prompt = [_IM_START] + torch.randint(0, 95, (4 + 3 * i,), generator=g).tolist() + [95]
        target = encode(text) + [_IM_END]
        rows.append([_IGNORE] * len(prompt) + target)
    width = max(map(len, rows))
    labels = torch.full((len(rows), width), _IGNORE)
    for r, y in enumerate(rows):
        labels[r, :len(y)] = torch.tensor(y)
    soft = CoordSoftCEW1Config(enabled=coord_enabled, ce_weight=ce_weight, text_gate_weight=text_gate)
    if not coord_enabled:
        soft = dataclasses.replace(soft, enabled=False)
    objective = Stage1Objective(soft, vocab)
    hidden = torch.randn(len(rows), width, 16, generator=g)
    head = torch.nn.Linear(16, _V)
    torch.nn.init.normal_(head.weight, std=2.0, generator=g)
    counts = objective.counts(labels) * 2 if window else None  # "the window": this micro-batch twice
    return Stage1Scenario(objective=objective, labels=labels, hidden=hidden, head=head, window_counts=counts)
