"""Classification and detection figures, numpy only."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["classification_report", "detection_report"]


def classification_report(
    y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]
) -> dict[str, Any]:
    """Accuracy, balanced accuracy, per-class recall/precision and the confusion matrix
    (rows: true class, columns: predicted)."""
    k = len(classes)
    matrix = np.zeros((k, k), dtype=np.int64)
    for t, p in zip(y_true, y_pred, strict=True):
        matrix[int(t), int(p)] += 1
    per_class = {}
    recalls = []
    for i, name in enumerate(classes):
        support = int(matrix[i].sum())
        predicted = int(matrix[:, i].sum())
        recall = matrix[i, i] / support if support else None
        if recall is not None:
            recalls.append(recall)
        per_class[name] = {
            "support": support,
            "accuracy": None if recall is None else round(float(recall), 4),
            "precision": round(float(matrix[i, i] / predicted), 4) if predicted else None,
        }
    total = int(matrix.sum())
    return {
        "accuracy": round(float(np.trace(matrix) / total), 4) if total else None,
        "balanced_accuracy": round(float(np.mean(recalls)), 4) if recalls else None,
        "examples": total,
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
        "classes": list(classes),
    }


def detection_report(labels: np.ndarray, flagged: np.ndarray) -> dict[str, Any]:
    """Precision, recall and F1 of boolean detections against boolean labels."""
    labels, flagged = labels.astype(bool), flagged.astype(bool)
    tp = int((labels & flagged).sum())
    fp = int((~labels & flagged).sum())
    fn = int((labels & ~flagged).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
        "true_positives": tp,
        "false_positives": fp,
        "false_negatives": fn,
    }
