"""UA (mean per-class recall), WA (accuracy), macro-F1 and the confusion matrix, over a whole set."""
from typing import Dict, Sequence

import numpy as np


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> np.ndarray:
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return cm


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> Dict[str, object]:
    """Rows of the confusion matrix are true classes. Classes absent from y_true are left out of UA."""
    cm = confusion_matrix(y_true, y_pred, n_classes)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    tp = np.diag(cm).astype(np.float64)
    present = support > 0
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=present)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    total = int(cm.sum())
    return {
        "ua": float(recall[present].mean()) if present.any() else 0.0,
        "wa": float(tp.sum() / total) if total else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "recall": recall.tolist(),
        "confusion": cm.tolist(),
        "n": total,
    }
