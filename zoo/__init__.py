"""Ready-built models on keras_selfattn layers (TensorFlow backend)."""
