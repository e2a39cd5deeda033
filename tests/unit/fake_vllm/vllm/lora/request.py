class LoRARequest:
    def __init__(self, lora_name=None, lora_int_id=None, lora_path=None, **kw):
        self.lora_name, self.lora_int_id, self.lora_path = lora_name, lora_int_id, lora_path
