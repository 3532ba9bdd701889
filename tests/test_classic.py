"""The classic baseline (model=classic): digiKam's defect measures respond to each defect, and a
head on them trains, checkpoints and reloads like any other model."""

import json

import cv2
import numpy as np
import pytest
import skimage.data
import torch

from iqs.models.backbones import BackboneError, input_config
from iqs.models.classic import _CENTRE, _SCALE, FEATURE_NAMES, ClassicFeatures, classic_measures
from iqs.train import train
from tests.conftest import compose_group, compose_train

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return cv2.resize(skimage.data.astronaut(), (256, 256), interpolation=cv2.INTER_AREA)


def measures(rgb: np.ndarray) -> dict[str, float]:
    return dict(zip(FEATURE_NAMES, classic_measures(rgb).tolist()))


def normalised(*images: np.ndarray) -> torch.Tensor:
    """uint8 RGB photos -> the normalised NCHW batch the data module makes."""
    x = (np.stack(images).astype(np.float32) / 255.0 - MEAN) / STD
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def test_features_are_finite_scaled_and_match_the_photo(photo):
    rng = np.random.default_rng(0)
    batch = [
        photo,
        cv2.resize(skimage.data.coffee(), (256, 256), interpolation=cv2.INTER_AREA),
        rng.integers(0, 256, photo.shape, dtype=np.uint8),  # pure noise
        np.zeros_like(photo),  # black
        np.full_like(photo, 255),  # white
    ]
    features = ClassicFeatures()
    assert features.num_features == len(FEATURE_NAMES) and features.head_hidden_size is None
    assert not list(features.parameters()) and not list(features.state_dict())
    out = features(normalised(*batch))
    assert out.shape == (5, len(FEATURE_NAMES)) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert out[:2].abs().max() < 5  # real photos land in a range a head trains on
    # Normalisation is undone exactly: the same measures as on the 8-bit photo.
    raw = torch.from_numpy(classic_measures(photo))
    torch.testing.assert_close(out[0] * torch.from_numpy(_SCALE) + torch.from_numpy(_CENTRE), raw)
    assert features(normalised(photo).double()).dtype == torch.float64


def test_blur_lowers_sharpness(photo):
    clean, blurred = measures(photo), measures(cv2.GaussianBlur(photo, (0, 0), 2.0))
    assert blurred["blur_laplacian_var"] < clean["blur_laplacian_var"] - 1
    assert blurred["blur_gradient_energy"] < clean["blur_gradient_energy"]
    assert blurred["blur_defocus_share"] > clean["blur_defocus_share"]


def test_noise_raises_noise_measures(photo):
    rng = np.random.default_rng(0)
    grey_noise = rng.normal(0, 12, photo.shape[:2])[..., None]
    colour_noise = rng.normal(0, 12, photo.shape)
    clean = measures(photo)
    noisy = measures(np.clip(photo + grey_noise, 0, 255).astype(np.uint8))
    colour = measures(np.clip(photo + colour_noise, 0, 255).astype(np.uint8))
    assert noisy["noise_luma_sigma"] > clean["noise_luma_sigma"] + 0.5
    assert colour["noise_chroma_sigma"] > clean["noise_chroma_sigma"] + 0.5


def test_exposure_follows_brightness(photo):
    clean = measures(photo)
    dark = measures((photo * 0.25).astype(np.uint8))
    bright = measures(np.clip(photo * 1.8, 0, 255).astype(np.uint8))
    assert dark["exposure_mean"] < clean["exposure_mean"] < bright["exposure_mean"]
    assert dark["exposure_dark_share"] > clean["exposure_dark_share"] + 0.1
    assert bright["exposure_bright_share"] > clean["exposure_bright_share"] + 0.1
    assert dark["exposure_spread"] < clean["exposure_spread"]


def test_strong_jpeg_is_blockier(photo):
    def jpeg(quality: int) -> np.ndarray:
        _, buf = cv2.imencode(".jpg", photo[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
        return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].copy()

    low, high = measures(jpeg(5)), measures(jpeg(95))
    assert low["compression_blockiness"] > high["compression_blockiness"] + 0.2
    assert low["compression_flat_share"] > high["compression_flat_share"]
    # the grid is found at any offset (a crop that does not start on a block boundary)
    shifted = measures(jpeg(5)[3:, 5:])
    assert shifted["compression_blockiness"] > high["compression_blockiness"] + 0.2


def test_config_states_its_own_input_and_has_nothing_to_load():
    cfg = compose_group("model", "classic")
    assert input_config(cfg.backbone).size == 224
    assert input_config(cfg.backbone, 64).mean == pytest.approx(tuple(MEAN))
    with pytest.raises(BackboneError, match="no weights"):
        ClassicFeatures(pretrained=True)


def test_classic_trains_fast_dev_run(tmp_path, data_dir):
    run = tmp_path / "run"
    train(compose_train(["model=classic", "debug=fdr", "logger=csv"], run, data_dir))
    metrics = json.loads((run / "test_metrics.json").read_text())["metrics"]
    assert "test/srcc" in metrics


def test_classic_checkpoint_reloads_but_does_not_export(tmp_path, data_dir):
    from iqs.deploy import DeployedModel
    from iqs.export import export_onnx
    from iqs.models.module import load_checkpoint

    run = tmp_path / "run"
    train(compose_train(["model=classic", "debug=limit"], run, data_dir))
    model, cfg = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert isinstance(model.backbone, ClassicFeatures)
    x = normalised(np.zeros((64, 64, 3), np.uint8), np.full((64, 64, 3), 200, np.uint8))
    probs = model.predict_probs(x)
    assert probs.shape == (2, 3) and torch.allclose(probs.sum(1), torch.ones(2))
    inp = input_config(cfg.model.backbone, cfg.data.get("image_size"))
    with pytest.raises(RuntimeError, match="cannot be traced or exported"):
        export_onnx(DeployedModel(model, inp.size, inp.mean, inp.std), tmp_path / "m.onnx")
