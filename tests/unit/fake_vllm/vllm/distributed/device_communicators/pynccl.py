class PyNcclCommunicator:
    def __init__(self, *a, **kw):
        raise RuntimeError("fake vllm: no NCCL")
