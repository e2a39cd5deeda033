"""Fake msgspec (a vLLM dependency ms-swift imports from its rollout utils): only ``field``."""


def field(*args, **kwargs):
    return kwargs.get("default")
