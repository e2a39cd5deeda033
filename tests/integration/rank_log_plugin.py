"""Test-only ms-swift plugin (a second ``external_plugins`` file): what every rank decided, one file per rank.

``COORDEXP_TEST_RANK_LOG_DIR`` set → each process (global rank ``RANK``) writes ``rank<RANK>.log`` there with

* every INFO line of the ``swift.coordexp_swift`` logger (ms-swift silences INFO on all but each node's local rank
  0; this handler sees them on every rank), e.g. ``Channel-B rollout: s=1 micro_idx=0 seed_base=1000045 rank=1 ..``;
* ``channel s=<step> -> <A|B>`` for each call of the real scheduler ``channel_at`` made by the two-channel trainer's
  ``compute_loss`` (the module attribute is wrapped; the schedule itself is untouched);
* ``seeds rank=<r> world_size=<w> micro_idx=<m> base=<b> request_seeds=[...]`` for each Channel-B seed context
  (``RolloutSeeds.for_step`` wrapped; the per-request seeds are the class's own ``request_seeds``).

Observation only: nothing the run computes changes.
"""
from __future__ import annotations

import logging
import os

_DIR = os.environ.get("COORDEXP_TEST_RANK_LOG_DIR")
if _DIR:
    from coordexp_swift.rollout import seeds as _seeds
    from coordexp_swift.trainers import stage2_two_channel as _s2

    _path = os.path.join(_DIR, f"rank{os.environ.get('RANK', '0')}.log")
    _handler = logging.FileHandler(_path, mode="a")
    _handler.setLevel(logging.INFO)
    _handler.setFormatter(logging.Formatter("%(message)s"))
    _log = logging.getLogger("swift.coordexp_swift")
    _log.addHandler(_handler)
    _log.setLevel(logging.INFO)  # ms-swift's own handlers keep their levels (ERROR on non-local-master ranks)

    def _write(line: str) -> None:
        with open(_path, "a") as fh:
            fh.write(line + "\n")

    if not getattr(_s2.channel_at, "_rank_logged", False):
        _channel_at = _s2.channel_at

        def channel_at(step, **kwargs):
            channel = _channel_at(step, **kwargs)
            _write(f"channel s={step} -> {channel}")
            return channel

        channel_at._rank_logged = True
        _s2.channel_at = channel_at

        _for_step = _seeds.RolloutSeeds.for_step.__func__

        def for_step(cls, training_seed, step, **kwargs):
            out = _for_step(cls, training_seed, step, **kwargs)
            _write(f"seeds rank={out.rank} world_size={out.world_size} micro_idx={out.micro_idx} base={out.base} "
                   f"request_seeds={out.request_seeds(out.per_device_bs or 1)}")
            return out

        _seeds.RolloutSeeds.for_step = classmethod(for_step)
