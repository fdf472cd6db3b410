"""Classification metrics agree with scikit-learn on random predictions, and with hand computations."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from ctdl.metrics.classification import (
    auc_ovr,
    classification_metrics,
    cohen_kappa,
    confusion_matrix,
    macro_auc,
    precision_recall_f1,
    regression_metrics,
)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_agree_with_sklearn_on_random_predictions(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k, n = 5, 60
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y] * rng.random((n, 1))  # better than chance, not perfect
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    pred = probs.argmax(1)
    names = ["a", "b", "c", "d", "e"]
    m = classification_metrics(y, probs, names)
    assert m["kappa"] == pytest.approx(skm.cohen_kappa_score(y, pred), abs=1e-12)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
    p, r, f, s = skm.precision_recall_fscore_support(y, pred, labels=range(k), zero_division=0)
    for i, c in enumerate(names):
        assert m[f"f1_{c}"] == pytest.approx(f[i], abs=1e-12)
        assert m[f"precision_{c}"] == pytest.approx(p[i], abs=1e-12)
        assert m[f"recall_{c}"] == pytest.approx(r[i], abs=1e-12)
        assert m[f"support_{c}"] == s[i]
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0), abs=1e-12)
    assert m["macro_auc"] == pytest.approx(skm.roc_auc_score(y, probs, multi_class="ovr", average="macro"), abs=1e-12)
    assert np.array_equal(confusion_matrix(y, pred, k), skm.confusion_matrix(y, pred, labels=range(k)))


def test_auc_with_ties_matches_sklearn() -> None:
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, 40)
    probs = rng.integers(0, 4, (40, 3)).astype(float) + 0.1  # many ties
    probs /= probs.sum(1, keepdims=True)
    for k in range(3):
        assert auc_ovr(y, probs)[k] == pytest.approx(skm.roc_auc_score(y == k, probs[:, k]), abs=1e-12)


def test_hand_computed_values() -> None:
    # 2 classes: truth [0,0,1,1], pred [0,1,1,1]: po = 3/4, pe = (2*1 + 2*3)/16 = 1/2, kappa = 0.5
    assert cohen_kappa([0, 0, 1, 1], [0, 1, 1, 1]) == pytest.approx(0.5)
    prf = precision_recall_f1([0, 0, 1, 1], [0, 1, 1, 1], 2)
    assert prf["precision"].tolist() == pytest.approx([1.0, 2 / 3])
    assert prf["recall"].tolist() == pytest.approx([0.5, 1.0])
    assert prf["f1"].tolist() == pytest.approx([2 / 3, 0.8])
    # a class never present and never predicted: F1 0, AUC skipped in the macro mean
    probs = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.6, 0.4, 0.0]])
    aucs = auc_ovr([0, 1, 0], probs)
    assert aucs[:2].tolist() == [1.0, 1.0] and np.isnan(aucs[2])
    assert macro_auc([0, 1, 0], probs) == 1.0
    assert cohen_kappa([1, 1], [1, 1]) == 1.0
    assert regression_metrics([[1.0, 2.0]], [[2.0, 0.0]]) == {"mse": 2.5, "mae": 1.5}


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="class indices"):
        confusion_matrix([0, 3], [0, 1], 3)
    with pytest.raises(ValueError, match="expected shape"):
        classification_metrics([0, 1], np.ones((2, 3)), ["a", "b"])
