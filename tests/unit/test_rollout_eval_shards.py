"""Eval rows counted once over uneven DDP shards (issue 10 item 3; SPEC §7.1): accelerate's real ``BatchSamplerShard``
(what ``accelerator.prepare`` wraps the eval loader's sampler in) pads the shards of an odd eval set with repeats;
:func:`first_occurrences` keeps every dataset index exactly once. The 2-process ``swift sft`` check is
``tests/integration/test_rollout_eval_ddp.py``."""
from __future__ import annotations

import pytest
from accelerate.data_loader import BatchSamplerShard
from torch.utils.data import BatchSampler, SequentialSampler

from coordexp_swift.trainers.rollout_eval import EVAL_INDEX_KEY, IndexedEvalDataset, first_occurrences


def _shards(n: int, world: int, bs: int) -> list[list[int]]:
    base = BatchSampler(SequentialSampler(range(n)), batch_size=bs, drop_last=False)
    return [[i for batch in BatchSamplerShard(base, num_processes=world, process_index=r) for i in batch]
            for r in range(world)]


@pytest.mark.parametrize("n,world,bs", [(5, 2, 2), (5, 2, 1), (3, 4, 1), (7, 3, 2), (1, 2, 2), (8, 2, 2)])
def test_padding_repeats_dropped(n, world, bs):
    """issue 10 item 3: over accelerate's padded shards (every rank the same number of batches), the kept rows are
    exactly ``range(n)``, each once; with ``n`` a multiple of ``world·bs`` nothing is dropped."""
    shards = _shards(n, world, bs)
    assert len({len(s) for s in shards}) == 1  # lockstep: same number of rows (and batches) on every rank
    keep = first_occurrences(shards)
    kept = [i for s, k in zip(shards, keep) for i, x in zip(s, k) if x]
    assert sorted(kept) == list(range(n))
    if n % (world * bs) == 0:
        assert all(all(k) for k in keep)
    if (n, world, bs) == (5, 2, 2):  # the case of the module docstring of test_rollout_eval_ddp
        assert shards == [[0, 1, 4, 0], [2, 3, 1, 2]] and keep == [[True, True, True, False], [True, True, False, False]]


def test_rows_without_index_kept_and_indexed_dataset():
    """Rows without an index (direct callers, one process) are always kept; ``IndexedEvalDataset`` adds the index
    to each encoded row and leaves the row's own keys unchanged."""
    assert first_occurrences([[None, None, 1, 1]]) == [[True, True, True, False]]
    ds = IndexedEvalDataset([{"input_ids": [1, 2]}, {"input_ids": [3]}])
    assert len(ds) == 2 and ds[1] == {"input_ids": [3], EVAL_INDEX_KEY: 1}
    with pytest.raises(RuntimeError, match="not an encoded row"):
        IndexedEvalDataset([[1, 2]])[0]
