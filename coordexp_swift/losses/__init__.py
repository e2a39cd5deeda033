"""Pure loss math (torch only): ``coord_dist`` (soft labels, softCE, W1, gates, expectation decode),
``bbox`` (SmoothL1 / L1 / GIoU / CIoU on normalised boxes), ``stage1`` (Stage-1 target masks, token accuracies).

Submodules are imported explicitly by their users; this package file stays import-free.
"""
