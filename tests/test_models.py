"""Every backbone config builds and trains one step; local weights files are used."""

from pathlib import Path

import pytest
import timm
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from iqs.models.backbones import BackboneError, create_backbone, input_config
from iqs.models.losses import CrossEntropy
from iqs.train import CONFIG_DIR
from tests.conftest import compose_group

MODEL_CONFIGS = sorted(
    p.stem for p in (Path(CONFIG_DIR) / "model").glob("*.yaml") if not p.stem.startswith("_")
)


def _module(name: str):
    cfg = compose_group("model", name)
    optimizer = OmegaConf.create({"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3})
    return instantiate(cfg, loss=CrossEntropy(), optimizer=instantiate(optimizer))


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_backbone_config_builds_and_trains_one_step(name):
    assert {
        "mobilenetv3_small_100", "resnet18", "inception_v3", "inception_resnet_v2",
        "mobilenetv3_large_100", "efficientnet_b0", "resnet50", "convnext_tiny",
        "vit_small_patch16_224",
    } <= set(MODEL_CONFIGS)  # fmt: skip
    torch.manual_seed(0)
    module = _module(name)
    optimizer = module.configure_optimizers()
    size = 80  # the Inceptions need at least 75 px
    batch = {
        "image": torch.randn(4, 3, size, size),
        "label": torch.tensor([0, 1, 2, 1]),
        "score": torch.tensor([0.1, 0.5, 0.9, 0.6]),
        "source": torch.zeros(4, dtype=torch.long),
    }
    module.train()
    before = [p.detach().clone() for p in module.head.parameters()]
    loss = module.loss(module(batch["image"]), batch["label"], batch["score"])
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert module(batch["image"]).shape == (4, 3)
    assert any(not torch.equal(b, a) for b, a in zip(before, module.head.parameters()))


def test_head_is_a_config_choice():
    from torch import nn

    optimizer = instantiate(OmegaConf.create({"_target_": "torch.optim.Adam", "_partial_": True}))
    for head, layers in (("nima", 2), ("linear", 1)):
        cfg = compose_group("model", "resnet18", f"model/head={head}")
        module = instantiate(cfg, loss=CrossEntropy(), optimizer=optimizer)
        linears = [m for m in module.head.modules() if isinstance(m, nn.Linear)]
        assert len(linears) == layers and linears[-1].out_features == 3


def test_local_weights_file_is_loaded(tmp_path):
    torch.manual_seed(1)
    source = timm.create_model("resnet18", pretrained=False, num_classes=0)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    loaded = create_backbone("resnet18", weights=path).eval()
    fresh = create_backbone("resnet18").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source.eval()(x))
        assert not torch.allclose(fresh(x), loaded(x))


def test_missing_weights_file_and_unknown_backbone_are_clear(tmp_path):
    with pytest.raises(BackboneError, match="no such file"):
        create_backbone("resnet18", weights=tmp_path / "nope.pth")
    with pytest.raises(BackboneError, match="unknown timm backbone"):
        create_backbone("resnet_nope")


def test_input_config_comes_from_the_backbone():
    assert input_config("inception_v3").size == 299
    assert input_config("inception_v3").mean == pytest.approx((0.5, 0.5, 0.5))
    assert input_config("resnet18").size == 224
    assert input_config("resnet18", size=128).size == 128


def test_predicted_score_is_expected_class():
    loss = CrossEntropy()
    logits = torch.tensor([[10.0, -10.0, -10.0], [-10.0, -10.0, 10.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(loss.predict_score(logits), torch.tensor([0.0, 1.0, 0.5]))


def test_a_weights_file_of_another_model_or_with_prefixed_keys_is_refused(tmp_path):
    source = timm.create_model("resnet18", pretrained=False, num_classes=0).state_dict()
    prefixed = tmp_path / "prefixed.pth"
    torch.save({f"backbone.{k}": v for k, v in source.items()}, prefixed)
    with pytest.raises(BackboneError, match=r"prefixed\.pth lacks 1\d\d of the 1\d\d weights"):
        create_backbone("resnet18", weights=prefixed)
    other = tmp_path / "mobilenet.pth"
    torch.save(timm.create_model("mobilenetv3_small_100", num_classes=0).state_dict(), other)
    with pytest.raises(BackboneError, match="give a timm state dict of this model"):
        create_backbone("resnet18", weights=other)
    # a classifier in the file (an ImageNet checkpoint) is fine: the backbone drops it
    full = tmp_path / "imagenet.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), full)
    create_backbone("resnet18", weights=full)


def test_epoch_reseeding_takes_any_seed_seed_everything_takes():
    from types import SimpleNamespace

    from iqs.callbacks import EpochSeed

    for seed in (20260101, 2**32 - 1):  # seed * 1000 + epoch went past 2**32 - 1
        EpochSeed(seed).on_train_epoch_start(SimpleNamespace(current_epoch=3), None)
        a = torch.rand(2)
        EpochSeed(seed).on_train_epoch_start(SimpleNamespace(current_epoch=3), None)
        assert torch.equal(torch.rand(2), a)
