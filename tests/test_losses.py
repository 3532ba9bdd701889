"""Each loss against a hand computation on small tensors, and each loss config trains a step."""

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.nn import functional as F

from iqs.models.losses import (
    CornLoss,
    CrossEntropy,
    EMDLoss,
    FocalLoss,
    MultiTaskLoss,
    WeightedCrossEntropy,
)
from iqs.train import CONFIG_DIR
from tests.conftest import compose_group

LOGITS = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [-1.0, 0.0, 3.0], [1.0, 1.0, -2.0]])
LABELS = torch.tensor([0, 2, 2, 1])
SCORES = torch.tensor([0.1, 0.9, 0.95, 0.5])
P = LOGITS.softmax(dim=1).numpy()


def test_weighted_cross_entropy_balances_training_counts():
    loss = WeightedCrossEntropy("balanced")
    loss.set_class_counts(torch.tensor([10, 30, 60]))
    w = 100 / (3 * np.array([10, 30, 60]))
    np.testing.assert_allclose(loss.weight.numpy(), w, rtol=1e-6)
    y = LABELS.numpy()
    expected = np.sum(w[y] * -np.log(P[np.arange(4), y])) / np.sum(w[y])
    assert float(loss(LOGITS, LABELS, SCORES)) == pytest.approx(expected, rel=1e-5)
    # sklearn's "balanced" weights, also with a class missing from the training split
    from sklearn.utils.class_weight import compute_class_weight

    y_train = np.repeat([0, 1], [1000, 500])
    loss.set_class_counts(torch.tensor([1000, 500, 0]))
    want = compute_class_weight("balanced", classes=np.array([0, 1]), y=y_train)
    np.testing.assert_allclose(loss.weight.numpy(), [*want, 0.0], rtol=1e-6)
    smoothed = WeightedCrossEntropy("balanced", label_smoothing=0.1)
    smoothed.set_class_counts(torch.tensor([1000, 500, 0]))
    assert float(smoothed(LOGITS, LABELS.clamp(max=1), SCORES)) < 5  # was 267 with N / C
    fixed = WeightedCrossEntropy([1.0, 2.0, 3.0])
    fixed.set_class_counts(torch.tensor([10, 30, 60]))  # fixed weights are kept
    assert fixed.weight.tolist() == [1.0, 2.0, 3.0]


def test_focal_loss_by_hand():
    y = LABELS.numpy()
    pt = P[np.arange(4), y]
    expected = np.mean(-((1 - pt) ** 2) * np.log(pt))
    assert float(FocalLoss(gamma=2)(LOGITS, LABELS, SCORES)) == pytest.approx(expected, rel=1e-5)
    ce = float(CrossEntropy()(LOGITS, LABELS, SCORES))
    assert float(FocalLoss(gamma=0)(LOGITS, LABELS, SCORES)) == pytest.approx(ce, rel=1e-6)


def test_emd_matches_cumulative_distribution_formula():
    expected = []
    for p, y in zip(P, LABELS.numpy()):
        t = np.eye(3)[y]
        cdf_gap = [abs(p[: k + 1].sum() - t[: k + 1].sum()) for k in range(3)]
        expected.append(np.sqrt(np.mean(np.square(cdf_gap))))
    got = float(EMDLoss(r=2)(LOGITS, LABELS, SCORES))
    assert got == pytest.approx(np.mean(expected), rel=1e-5)
    # ordered: for a true Accepted, mass on Rejected costs more than the same mass on Pending
    near = torch.log(torch.tensor([[0.05, 0.9, 0.05]]))
    far = torch.log(torch.tensor([[0.9, 0.05, 0.05]]))
    two = torch.tensor([2])
    assert EMDLoss()(far, two, SCORES[:1]) > EMDLoss()(near, two, SCORES[:1])


def test_corn_probabilities_loss_and_ordering():
    loss = CornLoss()
    out = torch.tensor([[2.0, -1.0], [-3.0, 0.5], [1.0, 4.0], [0.0, 0.0]])
    s = torch.sigmoid(out).numpy()
    exceed = np.stack([s[:, 0], s[:, 0] * s[:, 1]], axis=1)
    probs = np.stack([1 - exceed[:, 0], exceed[:, 0] - exceed[:, 1], exceed[:, 1]], axis=1)
    np.testing.assert_allclose(loss.class_logits(out).exp().numpy(), probs, rtol=1e-5)
    assert (probs >= 0).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-6)
    np.testing.assert_allclose(loss.predict_score(out).numpy(), exceed.sum(axis=1) / 2, rtol=1e-6)

    # by hand: task 0 on all rows (target y > 0), task 1 on rows with y >= 1 (target y > 1)
    y = LABELS.numpy()

    def bce(z, t):
        return -(t * np.log(1 / (1 + np.exp(-z))) + (1 - t) * np.log(1 - 1 / (1 + np.exp(-z))))

    terms = [bce(out[i, 0].item(), float(y[i] > 0)) for i in range(4)]
    terms += [bce(out[i, 1].item(), float(y[i] > 1)) for i in range(4) if y[i] >= 1]
    assert float(loss(out, LABELS, SCORES)) == pytest.approx(np.sum(terms) / len(terms), rel=1e-5)

    # ordering: for a true Accepted, predicting Rejected costs more than predicting Pending
    two = torch.tensor([2])
    pending = torch.tensor([[4.0, -4.0]])
    rejected = torch.tensor([[-4.0, -4.0]])
    assert loss(rejected, two, SCORES[:1]) > loss(pending, two, SCORES[:1])


def test_multitask_adds_score_regression():
    out = torch.cat([LOGITS, torch.tensor([[0.0], [2.0], [-1.0], [0.5]])], dim=1)
    ce = F.cross_entropy(LOGITS, LABELS).item()
    pred = 1 / (1 + np.exp(-np.array([0.0, 2.0, -1.0, 0.5])))
    mse = np.mean((pred - SCORES.numpy()) ** 2)
    loss = MultiTaskLoss(weight=0.5)
    assert float(loss(out, LABELS, SCORES)) == pytest.approx(ce + 0.5 * mse, rel=1e-5)
    np.testing.assert_allclose(loss.predict_score(out).numpy(), pred, rtol=1e-6)


LOSS_CONFIGS = sorted(p.stem for p in (Path(CONFIG_DIR) / "loss").glob("*.yaml"))


@pytest.mark.parametrize("name", LOSS_CONFIGS)
def test_each_loss_config_trains_a_step(name):
    torch.manual_seed(0)
    loss = instantiate(OmegaConf.load(Path(CONFIG_DIR) / "loss" / f"{name}.yaml"))
    model_cfg = compose_group("model", "mobilenetv3_small_100")
    opt = OmegaConf.create({"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3})
    module = instantiate(model_cfg, loss=loss, optimizer=instantiate(opt))
    if hasattr(loss, "set_class_counts"):
        loss.set_class_counts(torch.tensor([5, 3, 2]))
    x = torch.randn(4, 3, 64, 64)
    outputs = module(x)
    assert outputs.shape == (4, loss.num_outputs)
    value = loss(outputs, LABELS, SCORES)
    value.backward()
    assert torch.isfinite(value)
    assert loss.class_logits(outputs).shape == (4, 3)
    score = loss.predict_score(outputs)
    assert score.shape == (4,) and bool(((score >= 0) & (score <= 1)).all())
