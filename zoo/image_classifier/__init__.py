from zoo.image_classifier.image_classifier import ImageClassifier

__all__ = ["ImageClassifier"]
