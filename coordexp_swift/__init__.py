"""coordexp_swift: the CoordExp method (coord-token detection JSON for Qwen3-VL) as an ms-swift plugin."""

__version__ = "0.1.0"
