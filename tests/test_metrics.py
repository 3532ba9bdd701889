"""QualityMetrics against scipy and scikit-learn on known vectors."""

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from iqs.metrics import QualityMetrics

RNG = np.random.default_rng(0)
N = 60
LABEL = RNG.integers(0, 3, N)
PRED = np.where(RNG.random(N) < 0.7, LABEL, RNG.integers(0, 3, N))
SCORE = RNG.random(N)
PRED_SCORE = SCORE + RNG.normal(0, 0.3, N)
SOURCE = np.repeat([0, 1], N // 2)


def _metrics(batches: int = 3) -> dict:
    m = QualityMetrics(["a", "b"])
    for idx in np.array_split(RNG.permutation(N), batches):  # order and batching must not matter
        m.update(
            torch.tensor(PRED[idx]),
            torch.tensor(PRED_SCORE[idx], dtype=torch.float32),
            torch.tensor(LABEL[idx]),
            torch.tensor(SCORE[idx], dtype=torch.float32),
            torch.tensor(SOURCE[idx]),
        )
    return {k: float(v) for k, v in m.compute().items()} | {"confmat": m.confusion_matrix()}


def test_overall_matches_sklearn_and_scipy():
    v = _metrics()
    assert v["acc"] == pytest.approx(accuracy_score(LABEL, PRED), abs=1e-6)
    assert v["f1_macro"] == pytest.approx(f1_score(LABEL, PRED, average="macro"), abs=1e-6)
    per_class = f1_score(LABEL, PRED, average=None)
    for i, name in enumerate(["rejected", "pending", "accepted"]):
        assert v[f"f1_{name}"] == pytest.approx(per_class[i], abs=1e-6)
    assert v["srcc_pooled"] == pytest.approx(spearmanr(PRED_SCORE, SCORE)[0], abs=1e-5)
    assert v["plcc"] == pytest.approx(pearsonr(PRED_SCORE, SCORE)[0], abs=1e-5)
    np.testing.assert_array_equal(v["confmat"].numpy(), confusion_matrix(LABEL, PRED))


def test_srcc_is_mean_of_per_source_srcc():
    v = _metrics()
    per_source = []
    for s, name in enumerate(["a", "b"]):
        mask = np.equal(SOURCE, s)
        expected = spearmanr(PRED_SCORE[mask], SCORE[mask])[0]
        assert v[f"{name}/srcc"] == pytest.approx(expected, abs=1e-5)
        assert v[f"{name}/f1_macro"] == pytest.approx(
            f1_score(LABEL[mask], PRED[mask], average="macro"), abs=1e-6
        )
        per_source.append(expected)
    assert v["srcc"] == pytest.approx(np.mean(per_source), abs=1e-5)
    assert v["srcc"] != pytest.approx(v["srcc_pooled"], abs=1e-4)


def test_source_absent_from_stage_is_left_out():
    m = QualityMetrics(["a", "b"])
    m.update(
        torch.tensor([0, 1, 2]),
        torch.tensor([0.1, 0.5, 0.9]),
        torch.tensor([0, 1, 2]),
        torch.tensor([0.2, 0.4, 0.8]),
        torch.tensor([0, 0, 0]),
    )
    v = m.compute()
    assert "b/srcc" not in v
    assert float(v["srcc"]) == pytest.approx(1.0, abs=1e-5)
    m.reset()
    assert int(m.counts.sum()) == 0


def test_srcc_of_constant_predictions_is_undefined_as_in_scipy():
    with np.errstate(invalid="ignore"), pytest.warns(Warning):
        assert np.isnan(spearmanr(np.full(6, 0.5), SCORE[:6])[0])
    m = QualityMetrics(["a", "b"])
    m.update(
        torch.tensor([0, 1, 2, 0, 1, 2]),
        torch.tensor([0.5, 0.5, 0.5, 0.1, 0.4, 0.9]),  # source a: one constant prediction
        torch.tensor([0, 1, 2, 0, 1, 2]),
        torch.tensor([0.2, 0.4, 0.8, 0.2, 0.5, 0.7]),
        torch.tensor([0, 0, 0, 1, 1, 1]),
    )
    v = {k: float(x) for k, x in m.compute().items()}
    assert np.isnan(v["a/srcc"]) and np.isnan(v["a/plcc"])
    assert v["b/srcc"] == pytest.approx(1.0, abs=1e-5)
    assert v["srcc"] == pytest.approx(1.0, abs=1e-5)  # the mean of the defined ones
