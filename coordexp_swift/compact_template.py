"""``qwen3_vl_compact``: ms-swift's Qwen3-VL template for checkpoints whose special tokens are not at Qwen's ids.

ms-swift's ``Qwen3VLTemplate`` hard-codes ``image_token_id = 151655`` / ``video_token_id = 151656``. The compact
tiny model (``make-tiny-model --vocab compact``) keeps the same special *tokens* right after its small BPE, so this
subclass reads both ids from the tokenizer; encoding is otherwise identical.
"""
from __future__ import annotations

TEMPLATE_TYPE = "qwen3_vl_compact"


def register_compact_template() -> None:
    """Register ``qwen3_vl_compact`` with ms-swift (idempotent)."""
    from swift.template import TEMPLATE_MAPPING, register_template
    from swift.template.templates.qwen import Qwen3VLTemplate, QwenTemplateMeta

    if TEMPLATE_TYPE in TEMPLATE_MAPPING:
        return

    class CompactQwen3VLTemplate(Qwen3VLTemplate):
        def init_processor(self, processor) -> None:
            super().init_processor(processor)
            if processor is not None:
                tok = self.tokenizer
                self.image_token_id = tok.convert_tokens_to_ids("<|image_pad|>")
                self.video_token_id = tok.convert_tokens_to_ids("<|video_pad|>")

    register_template(QwenTemplateMeta(TEMPLATE_TYPE, template_cls=CompactQwen3VLTemplate, default_system=None,
                                       thinking_prefix="<think>\n"))
