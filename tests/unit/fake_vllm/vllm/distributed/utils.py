class StatelessProcessGroup:
    @staticmethod
    def create(host, port, rank, world_size, data_expiration_seconds=3600, store_timeout=300, listen_socket=None):
        raise RuntimeError("fake vllm: no process groups")
