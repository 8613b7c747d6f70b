"""Holdout metrics, trivial baselines and the confusion-matrix plot. No tracking calls here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.dummy import DummyClassifier
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
)

from features.labels import CLASS_NAMES
from models.ensemble import as_probabilities

LABELS = np.arange(len(CLASS_NAMES))


def macro_f1(y_true, y_pred) -> float:
    """Macro-F1 over all three classes (a class never predicted scores 0, it is not skipped)."""
    return float(f1_score(y_true, y_pred, average="macro", labels=LABELS, zero_division=0))


def classification_metrics(y_true, proba: np.ndarray, y_pred=None) -> dict:
    """Macro-F1, accuracy, log loss, per-class precision/recall/F1 and the confusion matrix.

    ``proba`` has one column per class in ``CLASS_NAMES`` order; the prediction is its argmax unless
    ``y_pred`` is given (baselines whose call is not the most probable class, e.g. a random direction).
    """
    y_true = np.asarray(y_true)
    # float64 rows summing to one, also after the clip away from 0 (log loss of a 0 is infinite).
    clipped = np.clip(as_probabilities(proba), 1e-15, 1.0)
    clipped /= clipped.sum(axis=1, keepdims=True)
    y_pred = np.asarray(proba).argmax(axis=1) if y_pred is None else np.asarray(y_pred)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=LABELS, zero_division=0
    )
    out = {
        "macro_f1": macro_f1(y_true, y_pred),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "log_loss": float(log_loss(y_true, clipped, labels=LABELS)),
    }
    for k, name in enumerate(CLASS_NAMES):
        out[f"precision_{name}"] = float(precision[k])
        out[f"recall_{name}"] = float(recall[k])
        out[f"f1_{name}"] = float(f1[k])
        out[f"support_{name}"] = int(support[k])
    out["confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=LABELS).tolist()
    return out


def baseline_predictions(y_train, n_rows: int, seed: int) -> dict[str, np.ndarray]:
    """Class probabilities of the trivial baselines, fitted on the training labels only.

    ``majority`` always predicts the most frequent training class (its probabilities are the training
    class priors, so its log loss is meaningful); ``stratified`` draws random classes with the training
    class frequencies.
    """
    y_train = np.asarray(y_train)
    dummy_X = np.zeros((len(y_train), 1))
    out = {}
    for name, strategy in (("majority", "prior"), ("stratified", "stratified")):
        model = DummyClassifier(strategy=strategy, random_state=seed).fit(dummy_X, y_train)
        proba = np.zeros((n_rows, len(LABELS)))
        proba[:, model.classes_] = model.predict_proba(np.zeros((n_rows, 1)))
        out[name] = proba
    return out


def block_bootstrap_indices(n: int, block: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """Row indices of ``n_boot`` moving-block bootstrap resamples of ``n`` rows, shape (n_boot, n).

    Each resample strings together random runs of ``block`` consecutive rows (clipped to [1, n]), which
    keeps the autocorrelation of overlapping label windows and of held positions.
    """
    if n < 1:
        raise ValueError("cannot bootstrap zero rows")
    block = int(max(1, min(block, n)))
    rng = np.random.default_rng(seed)
    n_blocks = -(-n // block)
    starts = rng.integers(0, n - block + 1, size=(n_boot, n_blocks))
    return (starts[:, :, None] + np.arange(block)).reshape(n_boot, -1)[:, :n]


def bootstrap_macro_f1(y_true: np.ndarray, y_pred: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Macro-F1 (all three classes) of every bootstrap resample ``idx`` (n_boot, n) at once."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    k, n_boot = len(LABELS), len(idx)
    codes = y_true[idx] * k + y_pred[idx] + (np.arange(n_boot) * k * k)[:, None]
    cm = np.bincount(codes.ravel(), minlength=n_boot * k * k).reshape(n_boot, k, k)
    tp = np.diagonal(cm, axis1=1, axis2=2)
    denom = cm.sum(axis=1) + cm.sum(axis=2)  # (tp + fn) + (tp + fp)
    return np.divide(2 * tp, denom, out=np.zeros(tp.shape), where=denom > 0).mean(axis=1)


def block_bootstrap_gain(
    y_true, y_pred, y_ref, block: int, n_boot: int = 500, seed: int = 0
) -> tuple[float, float]:
    """Moving-block bootstrap of macro-F1(y_pred) - macro-F1(y_ref) on the same resampled rows.

    Blocks keep the autocorrelation that overlapping label windows create. Returns (probability that
    the gain is > 0, 5th percentile of the gain).
    """
    y_true, y_pred, y_ref = (np.asarray(a, dtype=np.int64) for a in (y_true, y_pred, y_ref))
    idx = block_bootstrap_indices(len(y_true), block, n_boot, seed)
    gain = bootstrap_macro_f1(y_true, y_pred, idx) - bootstrap_macro_f1(y_true, y_ref, idx)
    return float(np.mean(gain > 0)), float(np.percentile(gain, 5))


def plot_confusion_matrix(cm, title: str, path: str | Path) -> Path:
    """Write a labelled confusion-matrix PNG (counts and row-normalised recall) and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    row = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, row, out=np.zeros(cm.shape), where=row > 0)
    fig, ax = plt.subplots(figsize=(4.6, 4.0), dpi=120)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(
                j,
                i,
                f"{cm[i, j]}\n{share[i, j]:.0%}",
                ha="center",
                va="center",
                color="white" if share[i, j] > 0.5 else "black",
                fontsize=9,
            )
    ax.set_xticks(LABELS, CLASS_NAMES)
    ax.set_yticks(LABELS, CLASS_NAMES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
