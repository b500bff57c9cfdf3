from zoo.text_classifier.model import TextClassifier

__all__ = ["TextClassifier"]
