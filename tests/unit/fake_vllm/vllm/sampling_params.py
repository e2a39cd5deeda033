from vllm import SamplingParams  # noqa: F401


class StructuredOutputsParams:
    def __init__(self, regex=None):
        self.regex = regex


class RequestOutputKind:
    FINAL_ONLY = 2
