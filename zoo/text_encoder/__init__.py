from zoo.text_encoder.text_encoder import TextEncoder

__all__ = ["TextEncoder"]
