"""Fake: ms-swift's patch_remove_log looks for ``_log_task_completion`` here (absent → no patch)."""
