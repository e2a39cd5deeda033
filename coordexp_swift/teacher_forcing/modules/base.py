"""Module contract shared by objective and diagnostics modules (SPEC §6.1).

A module class declares ``name``, ``kind`` (``"objective"`` | ``"diagnostics"``), ``config_classes`` (trainer
variant -> frozen config dataclass; the variants it supports) and ``channels`` (the channels it may run on). An
instance is built from its resolved config and the run's :class:`RunSettings`, and called with a
``TeacherForcingContext``. It returns a :class:`ModuleOutput` of **unweighted** values (the executor multiplies by
the entry weight). Modules read only the context views, never run the model, and issue no collectives. They also
never read the device (no ``nonzero``, ``.item()``/``float(t)``, boolean-mask indexing, ``.cpu()``): every index
they need was built on the host by the ``TeacherForcingBatch`` (``ctx.index(context)``).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import torch

__all__ = ["ModuleOutput", "PipelineModule", "RunSettings", "graph_zero", "plain_zero"]


@dataclass(frozen=True)
class RunSettings:
    """Run-level values modules may read (not module config; ST keys enter the checksum via ``extra``).

    ``variant``: trainer variant; ``coord_decode_mode``: ``exp`` | ``st`` for geometry; ``coord_ctx_embed_mode``
    and ``softctx_temperature``: Channel-A self-context rows (diagnostics only here).
    """

    variant: str
    coord_decode_mode: str = "exp"
    coord_ctx_embed_mode: str = "st"
    softctx_temperature: float = 1.0


@dataclass(frozen=True)
class ModuleOutput:
    """Unweighted module result.

    ``loss``: scalar tensor (objective modules; graph-connected, exactly 0.0 when nothing is supervised).
    ``terms``: §8.2 contribution keys (``loss/struct_ce``, ``loss/geo``, …) -> scalar tensors summing to ``loss``.
    ``breakdown``: §8.2 breakdown keys (``loss/geo/bbox_ciou``, ``loss/struct_ce/self_context``, …) -> scalars.
    ``metrics``: diagnostics -> 0-d tensors (values computed on the device: never ``float(t)``, which is a host
    sync) or Python numbers (host-known counters); already fully named, not weighted.
    ``denominators``: ``terms``/``breakdown`` key -> name of the mean it is (``TeacherForcingContext.mean``), for keys
    that are token or slot means; lets a caller with global denominators recover micro-batch means for logging.
    """

    loss: torch.Tensor | None = None
    terms: Mapping[str, torch.Tensor] = field(default_factory=dict)
    breakdown: Mapping[str, torch.Tensor] = field(default_factory=dict)
    metrics: Mapping[str, torch.Tensor | float] = field(default_factory=dict)
    denominators: Mapping[str, str] = field(default_factory=dict)


def graph_zero(x: torch.Tensor) -> torch.Tensor:
    """Exact 0.0 (fp32 scalar) connected to ``x``'s graph. Its backward materialises a full-size zero gradient of
    ``x``, so only the executor uses it, once, when no module produced a graph-connected loss."""
    return x.reshape(-1)[:1].float().sum() * 0.0


def plain_zero(x: torch.Tensor) -> torch.Tensor:
    """Exact 0.0 (fp32 scalar) on ``x``'s device, outside the graph (a module term with nothing supervised)."""
    return torch.zeros((), dtype=torch.float32, device=x.device)


class PipelineModule(ABC):
    """Base class of pipeline modules; see the module docstring."""

    name: ClassVar[str]
    kind: ClassVar[str]
    config_classes: ClassVar[Mapping[str, type]]
    channels: ClassVar[tuple[str, ...]] = ("A", "B")

    def __init__(self, config: Any, settings: RunSettings) -> None:
        self.config = config
        self.settings = settings

    def reads_slot_rows(self, ctx: Any) -> bool:
        """Whether this module reads full-vocab logits rows at the coord slots of ``ctx`` (then the executor has
        ``ctx.gathered`` include them, so every consumer shares one gradient buffer)."""
        return False

    @abstractmethod
    def __call__(self, ctx: Any) -> ModuleOutput:
        """Compute the module's unweighted output on a ``TeacherForcingContext``."""
