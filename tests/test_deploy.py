"""For digiKam and photographers: export to ONNX, predict (with XMP sidecars) and eval."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import skimage.data
from PIL import Image
from sklearn.metrics import f1_score

from iqs.eval import evaluate
from iqs.export import main as iqs_export
from iqs.predict import main as iqs_predict
from iqs.train import train
from tests.conftest import compose_train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, data_dir) -> Path:
    """A tiny model trained for a few steps on the built-in data."""
    run = tmp_path_factory.mktemp("trained")
    overrides = ["logger=csv", "+trainer.limit_train_batches=4", "+trainer.limit_val_batches=2"]
    train(compose_train(overrides, run, data_dir))
    return run / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def onnx_model(checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "iqs.onnx"
    assert iqs_export([str(checkpoint), "--out", str(out)]) == 0
    return out


def _photos(folder: Path) -> list[Path]:
    """Ordinary RGB photos, as a user's folder holds them (one in a sub-folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, rgb in enumerate([skimage.data.astronaut(), skimage.data.coffee(),
                             skimage.data.chelsea(), skimage.data.rocket()]):  # fmt: skip
        path = folder / ("sub" if i == 3 else "") / f"photo_{i}.jpg"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rgb).save(path, quality=92)
        paths.append(path)
    png = folder / "photo_png.png"
    Image.fromarray(skimage.data.astronaut()[::2, ::3]).save(png)
    return [*paths, png]


def digikam_classes(onnx: Path, photos: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """digiKam's steps, written out with OpenCV as its aesthetic detector runs them."""
    net = cv2.dnn.readNetFromONNX(str(onnx))
    probs = []
    for path in photos:
        bgr = cv2.imread(str(path))
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        resized = cv2.resize(rgb, (299, 299), interpolation=cv2.INTER_NEAREST_EXACT)
        scaled = resized.astype(np.float32) / 127.5 - 1.0
        net.setInput(cv2.dnn.blobFromImage(scaled))
        probs.append(net.forward()[0])
    probs = np.array(probs)
    return probs.argmax(1), probs


def test_export_writes_a_verified_model_and_card(onnx_model, checkpoint):
    card = json.loads(onnx_model.with_suffix(".json").read_text())
    import hashlib

    assert card["sha256"] == hashlib.sha256(onnx_model.read_bytes()).hexdigest()
    assert card["classes"] == {"0": "rejected", "1": "pending", "2": "accepted"}
    assert card["input"]["size"] == [299, 299] and "[-1, 1]" in card["input"]["scaling"]
    assert card["verification"]["opencv_dnn"]["same_classes"]
    assert card["verification"]["onnxruntime"]["max_abs_diff"] < 1e-4
    assert card["training_config"]["model"]["backbone"]["name"] == "mobilenetv3_small_100"
    assert not list(onnx_model.parent.glob(".*.tmp"))
    # files to hand on to digiKam get an ordinary mode, not a temporary file's private 0600
    umask = os.umask(0)
    os.umask(umask)
    for path in (onnx_model, onnx_model.with_suffix(".json")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


@pytest.mark.parametrize("model", ["onnx", "ckpt"])
def test_predict_in_digikam_mode_matches_opencv_dnn(model, onnx_model, checkpoint, tmp_path):
    photos = _photos(tmp_path / "photos")
    out = tmp_path / "pred.csv"
    model_path = onnx_model if model == "onnx" else checkpoint
    assert iqs_predict([str(tmp_path / "photos"), "--model", str(model_path),
                        "--out", str(out)]) == 0  # fmt: skip
    got = pd.read_csv(out).set_index("path").loc[[str(p) for p in sorted(photos)]]
    classes, probs = digikam_classes(onnx_model, sorted(photos))
    names = np.array(["rejected", "pending", "accepted"])
    assert list(got["label"]) == list(names[classes])
    np.testing.assert_allclose(
        got[["prob_rejected", "prob_pending", "prob_accepted"]].to_numpy(), probs, atol=1e-4
    )


def _awkward_folder(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True)
    rgb = skimage.data.astronaut()[:300, :400]
    files = {}
    files["rotated"] = folder / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).save(files["rotated"], exif=exif)
    files["cmyk"] = folder / "cmyk.jpg"
    Image.fromarray(rgb).convert("CMYK").save(files["cmyk"])
    files["png16"] = folder / "deep.png"
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(files["png16"])
    files["rgba"] = folder / "alpha.png"
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])).save(files["rgba"])
    files["palette"] = folder / "palette.png"
    Image.fromarray(rgb).convert("P").save(files["palette"])
    files["grey"] = folder / "grey.jpg"
    Image.fromarray(rgb[..., 1]).save(files["grey"])
    files["corrupt"] = folder / "corrupt.jpg"
    data = files["rotated"].read_bytes()
    files["corrupt"].write_bytes(data[: len(data) // 3])
    files["text"] = folder / "notes.jpg"
    files["text"].write_text("not a photo")
    return files


def test_predict_labels_awkward_photos_and_reports_bad_ones(onnx_model, tmp_path, capsys):
    files = _awkward_folder(tmp_path / "mixed")
    before = {p: p.read_bytes() for p in files.values()}
    out = tmp_path / "pred.json"
    assert iqs_predict([str(tmp_path / "mixed"), "--model", str(onnx_model), "--out", str(out),
                        "--workers", "2", "--batch-size", "3"]) == 0  # fmt: skip
    rows = {Path(r["path"]).name: r for r in json.loads(out.read_text())}
    assert len(rows) == len(files)
    for key in ("rotated", "cmyk", "png16", "rgba", "palette", "grey"):
        row = rows[files[key].name]
        assert row["label"] in ("rejected", "pending", "accepted") and not row["error"], row
        assert sum(row[f"prob_{c}"] for c in ("rejected", "pending", "accepted")) == pytest.approx(
            1
        )
    assert "truncated" in rows["corrupt.jpg"]["error"]
    assert rows["notes.jpg"]["error"] and "label" not in rows["notes.jpg"]
    printed = capsys.readouterr().out
    assert "unreadable: 2" in printed and "corrupt.jpg" in printed
    assert {p: p.read_bytes() for p in files.values()} == before  # photos never modified


def test_predict_writes_pick_labels_to_sidecars(onnx_model, tmp_path):
    from iqs.xmp import read_pick_label

    photos = _photos(tmp_path / "photos")
    args = [str(tmp_path / "photos"), "--model", str(onnx_model), "--out", str(tmp_path / "p.csv")]
    assert iqs_predict([*args, "--xmp", "--dry-run"]) == 0
    assert not list((tmp_path / "photos").rglob("*.xmp"))  # a dry run writes nothing
    assert iqs_predict([*args, "--xmp"]) == 0
    rows = pd.read_csv(tmp_path / "p.csv").set_index("path")
    for photo in photos:
        sidecar = Path(f"{photo}.xmp")
        assert read_pick_label(sidecar) == rows.loc[str(photo), "pick_label"]
        assert "created" in rows.loc[str(photo), "xmp"]
    assert iqs_predict([*args, "--xmp", "--sidecar", "compatible"]) == 0
    assert all(p.with_suffix(".xmp").is_file() for p in photos)
    assert iqs_predict([*args, "--xmp"]) == 0  # twice: nothing to change
    assert pd.read_csv(tmp_path / "p.csv")["xmp"].str.startswith("unchanged").all()


def test_predict_refuses_photos_sharing_a_sidecar_and_exits_1(onnx_model, tmp_path, capsys):
    import csv

    from iqs.xmp import read_pick_label

    folder = tmp_path / "shared"
    folder.mkdir()
    rgb = skimage.data.coffee()[:240, :320]
    for name in ("c.jpg", "c.png", os.fsdecode(b"caf\xe9.jpg")):  # a Latin-1 name, too
        Image.fromarray(rgb).save(folder / name)
    out = tmp_path / "p.csv"
    args = [str(folder), "--model", str(onnx_model), "--out", str(out), "--xmp"]
    assert iqs_predict([*args, "--sidecar", "compatible"]) == 1
    assert "2 sidecar(s) not written" in capsys.readouterr().err
    assert sorted(p.name for p in folder.glob("*.xmp")) == [os.fsdecode(b"caf\xe9.xmp")]
    with open(out, encoding="utf-8", errors="surrogateescape", newline="") as f:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(f)}
    for name in ("c.jpg", "c.png"):
        assert rows[name]["xmp"].startswith("failed: ") and "c.jpg and " in rows[name]["xmp"]
        assert rows[name]["label"]  # the prediction itself is kept
    latin = rows[os.fsdecode(b"caf\xe9.jpg")]
    assert read_pick_label(folder / os.fsdecode(b"caf\xe9.xmp")) == int(latin["pick_label"])
    # default naming gives each photo its own sidecar
    assert iqs_predict(args) == 0
    assert read_pick_label(folder / "c.png.xmp") == int(rows["c.png"]["pick_label"])


def test_eval_reports_metrics_that_match_sklearn(checkpoint, tmp_path, data_dir):
    from tests.conftest import compose_eval

    # No data override: the checkpoint's own mix, seed and split.
    cfg = compose_eval([f"ckpt_path={checkpoint}", "num_workers=0"], tmp_path, data_dir)
    report = evaluate(cfg)
    rows = pd.read_csv(tmp_path / "predictions.csv")
    assert set(rows["split"]) == {"test"} and report["rows"] == len(rows)
    want = f1_score(rows["label"], rows["pred_label"].astype(int), average="macro")
    assert report["metrics"]["f1_macro"] == pytest.approx(want, abs=1e-6)
    assert 0 <= report["digikam"]["label_agreement"] <= 1
    assert (tmp_path / "confusion_matrix_all.png").is_file()
    assert (tmp_path / "confusion_matrix_synthetic.png").is_file()
    saved = json.loads((tmp_path / "eval_metrics.json").read_text())
    assert saved["metrics"]["synthetic/srcc"] == report["metrics"]["synthetic/srcc"]


@pytest.mark.parametrize("loss", ["corn", "emd", "multitask"])
def test_models_trained_with_every_output_kind_export_and_verify(loss, tmp_path, data_dir):
    # CORN's class probabilities once used cumprod, which ONNX lacks: its models could not ship
    from iqs.deploy import DeployedModel
    from iqs.export import export_onnx, sample_photos, verify
    from iqs.models.backbones import input_config
    from iqs.models.module import build_model

    cfg = compose_train([f"loss={loss}"], tmp_path, data_dir)
    inp = input_config(cfg.model.backbone.name)
    model = DeployedModel(build_model(cfg, ["synthetic"]), inp.size, inp.mean, inp.std).eval()
    export_onnx(model, tmp_path / "m.onnx")
    report = verify(model, tmp_path / "m.onnx", sample_photos(None, limit=4), 1e-4)
    assert report["onnxruntime"]["same_classes"] and report["opencv_dnn"]["same_classes"]
    assert report["onnxruntime"]["max_abs_diff"] < 1e-4


def test_train_preprocessing_can_go_to_spawned_workers(checkpoint):
    import pickle

    from iqs.predict import load_predictor

    prep, _ = load_predictor(checkpoint, "train")
    rgb = skimage.data.coffee()
    assert np.array_equal(pickle.loads(pickle.dumps(prep))(rgb), prep(rgb))
