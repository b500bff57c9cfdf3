from zoo.image_classifier.model import ImageClassifier

__all__ = ["ImageClassifier"]
