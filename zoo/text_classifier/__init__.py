from zoo.text_classifier.text_classifier import TextClassifier

__all__ = ["TextClassifier"]
