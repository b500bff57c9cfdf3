from zoo.text_encoder.model import TextEncoder

__all__ = ["TextEncoder"]
