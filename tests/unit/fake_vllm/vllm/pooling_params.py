class PoolingParams:
    def __init__(self, task=None):
        self.task = task
