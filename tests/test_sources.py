"""Real data sets: parsing the real annotation files, label rules, leak-free splits, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hydra.utils import instantiate

from iqs.data import manifest as mf
from iqs.data.labels import DROP, LabelRule
from iqs.data.sources.ava import AVA
from iqs.data.sources.base import SourceError
from iqs.data.sources.clive import CLIVE
from iqs.data.sources.eva import EVA
from iqs.data.sources.folder import Folder
from iqs.data.sources.kadid10k import KADID10k
from iqs.data.sources.koniq10k import KonIQ10k
from iqs.data.sources.spaq import SPAQ
from iqs.data.splits import assign_group_splits
from tests import datasets as ds
from tests.conftest import compose_group

STUDY = compose_group("data", "combined").labels
DEFINITION = compose_group("data", "combined", "data/labels=definition").labels


def rule(preset, name: str) -> LabelRule:
    return LabelRule.from_config(dict(preset[name]))


# -- the real annotation files ------------------------------------------------------------------


def test_koniq_real_files_rows_and_official_split():
    src = KonIQ10k(root=ds.shared("koniq10k"), labels=STUDY.koniq10k)
    df = src.annotations()
    assert len(df) == 10_073
    assert df["split"].value_counts().to_dict() == {"train": 7058, "val": 1000, "test": 2015}
    assert not src.problems
    raw = pd.read_csv(ds.shared("koniq10k", "koniq10k_scores_and_distributions.csv"))
    np.testing.assert_allclose(df["raw_score"], raw["MOS_zscore"])
    assert df["histogram"].iloc[0] == " ".join(
        str(v) for v in raw.loc[0, ["c1", "c2", "c3", "c4", "c5"]]
    )


def test_spaq_real_csv_with_bom():
    src = SPAQ(root=ds.shared("spaq"), labels=STUDY.spaq)
    df = src.annotations()
    assert len(df) == 11_125
    assert df["file"].iloc[0] == "00001.jpg"  # the BOM is not part of the first name
    assert df["raw_score"].between(0, 100).all()


def test_ava_official_test_list_has_20000_ids():
    src = AVA(root=ds.shared("ava"), labels=STUDY.ava)
    ids = src.test_ids()
    assert len(ids) == 20_000 and len(set(ids)) == 20_000


@pytest.mark.parametrize("preset", ["study", "definition"])
def test_label_counts_on_koniq_and_spaq_match_an_independent_computation(preset):
    labels = STUDY if preset == "study" else DEFINITION
    koniq = pd.read_csv(ds.shared("koniq10k", "koniq10k_scores_and_distributions.csv"))
    spaq = pd.read_csv(ds.shared("spaq", "SPAQ_annotations.csv"), encoding="utf-8-sig")
    for raw, score, source in (
        (koniq, "MOS_zscore", KonIQ10k(root=ds.shared("koniq10k"), labels=labels.koniq10k)),
        (spaq, "MOS", SPAQ(root=ds.shared("spaq"), labels=labels.spaq)),
    ):
        got = pd.Series(source.rule(source.annotations()["raw_score"])).value_counts().to_dict()
        rejected = int((raw[score] <= 60).sum())
        above = len(raw) - rejected
        want = {0: rejected, DROP: above} if preset == "study" else {0: rejected, 1: above}
        assert got == want


def test_study_ava_rule_keeps_the_ambiguous_band_explicit():
    ava, eva = rule(STUDY, "ava"), rule(STUDY, "eva")
    np.testing.assert_array_equal(
        ava([1.0, 4.0, 4.01, 5.0, 5.01, 5.99, 6.0, 9.0]), [0, 0, 1, 1, DROP, DROP, 2, 2]
    )
    np.testing.assert_array_equal(eva([0.0, 6.0, 6.01, 10.0]), [1, 1, 2, 2])


def test_label_rule_rejects_overlapping_bands_and_unknown_keys():
    with pytest.raises(ValueError, match="more than one band"):
        LabelRule([{"le": 5, "label": "rejected"}, {"ge": 5, "label": "pending"}])([5.0])
    with pytest.raises(ValueError, match="unknown key"):
        LabelRule([{"below": 5, "label": "rejected"}])
    with pytest.raises(ValueError, match="unknown label"):
        LabelRule([{"le": 5, "label": "good"}])


# -- tiny trees in each layout --------------------------------------------------------------------


def test_each_source_reads_its_layout(trees):
    def manifest(source):
        df = mf.validate(source.manifest())
        assert df["score"].between(0, 1).all() and not source.problems, source.problems
        return df

    koniq = manifest(KonIQ10k(root=trees / "koniq10k", labels=DEFINITION.koniq10k))
    assert set(koniq["split"]) == {"train", "val", "test"} and len(koniq) == 24
    assert koniq["image_id"].str.startswith("koniq:").all()
    assert len(manifest(SPAQ(root=trees / "spaq", labels=DEFINITION.spaq))) == 24
    ava = manifest(AVA(root=trees / "ava", labels=STUDY.ava))
    assert set(ava["split"]) == {"test", "trainval"}
    assert ava["histogram"].str.split().map(len).eq(10).all()
    eva = manifest(EVA(root=trees / "eva", labels=STUDY.eva))
    assert len(eva) == 10 and eva["histogram"].str.split().map(len).eq(11).all()
    assert eva["histogram"].map(lambda h: sum(map(int, h.split()))).eq(30).all()
    kadid = manifest(KADID10k(root=trees / "kadid10k", labels=DEFINITION.kadid10k))
    assert kadid.groupby("group").size().eq(6).all()  # 3 distortions x 2 levels per reference
    clive = manifest(CLIVE(root=trees / "clive", labels=DEFINITION.clive))
    assert len(clive) == 12 and not clive["path"].str.contains("trainingImages").any()
    folder = manifest(Folder(root=trees / "folder", labels=STUDY.folder))
    assert folder["image_id"].iloc[0].startswith("folder:") and len(folder) == 9


def test_eva_score_is_the_mean_of_its_votes(trees):
    votes = pd.read_csv(trees / "eva" / "data" / "votes_filtered.csv", sep="=")
    want = votes.groupby("image_id")["score"].mean() / 10
    got = EVA(root=trees / "eva", labels=STUDY.eva).manifest()
    got = got.set_index(got["image_id"].str.removeprefix("ava:").astype(int))["score"]
    np.testing.assert_allclose(got.sort_index(), want.sort_index())


def test_spaq_reads_the_excel_file_as_distributed(trees, tmp_path):
    csv = pd.read_csv(trees / "spaq" / "SPAQ_annotations.csv", encoding="utf-8-sig")
    (tmp_path / "Annotations").mkdir()
    csv.to_excel(tmp_path / "Annotations" / "MOS and Image attribute scores.xlsx", index=False)
    got = SPAQ(root=tmp_path, labels=STUDY.spaq, check_files=False).annotations()
    np.testing.assert_allclose(got["raw_score"], csv["MOS"])


def test_a_photo_in_ava_and_eva_lands_in_one_split(trees):
    sources = {
        "ava": AVA(root=trees / "ava", labels=STUDY.ava),
        "eva": EVA(root=trees / "eva", labels=STUDY.eva),
    }
    frames = [mf.validate(s.manifest()).assign(source=n) for n, s in sources.items()]
    df = assign_group_splits(
        mf.validate(pd.concat(frames, ignore_index=True)),
        {"train": 0.8, "val": 0.1, "test": 0.1},
        0,
    )
    mf.check_no_leak(df)
    split = df.groupby("image_id")["split"].agg(set)
    assert split["ava:1000"] == {"test"} and split["ava:1001"] == {"test"}  # AVA's official test
    assert split["ava:1008"] <= {"train", "val"}  # AVA trainval carries over to EVA's copy
    assert set(df["split"]) <= {"train", "val", "test"}


def test_conflicting_splits_for_one_photo_are_an_error():
    df = pd.DataFrame(
        {"group": ["a", "a", "b"], "split": ["train", "test", ""], "source": "s", "label": 0}
    )
    with pytest.raises(mf.ManifestError, match="different splits"):
        assign_group_splits(df, {"train": 0.8, "val": 0.1, "test": 0.1}, 0)


def test_trainval_and_test_for_one_photo_are_an_error_and_input_is_untouched():
    df = pd.DataFrame(
        {"group": ["a", "a", "b"], "split": ["trainval", "test", ""], "source": "s", "label": 0}
    )
    before = df.copy()
    with pytest.raises(mf.ManifestError, match=r"\['a'\] are 'trainval' in one source"):
        assign_group_splits(df, {"train": 0.8, "val": 0.1, "test": 0.1}, 0)
    df.loc[1, "split"] = ""
    before.loc[1, "split"] = ""
    out = assign_group_splits(df, {"train": 0.8, "val": 0.1, "test": 0.1}, 0)
    pd.testing.assert_frame_equal(df, before)  # the caller's table keeps its splits
    assert set(out.loc[out["group"] == "a", "split"]) <= {"train", "val"}


def test_seeded_split_is_stratified_by_class_and_reproducible():
    n = 1000
    df = pd.DataFrame(
        {
            "group": [f"g{i}" for i in range(n)],
            "split": "",
            "source": np.where(np.arange(n) < 300, "a", "b"),
            "label": np.arange(n) % 3,
        }
    )
    fractions = {"train": 0.8, "val": 0.1, "test": 0.1}
    a, b = assign_group_splits(df, fractions, 7), assign_group_splits(df, fractions, 7)
    pd.testing.assert_frame_equal(a, b)
    share = pd.crosstab([a["source"], a["label"]], a["split"], normalize="index")
    assert np.allclose(share["test"], 0.1, atol=0.02) and np.allclose(share["val"], 0.1, atol=0.02)
    assert not assign_group_splits(df, fractions, 8)["split"].equals(a["split"])


# -- bad input -------------------------------------------------------------------------------------


def test_missing_root_says_where_and_where_to_download(tmp_path):
    with pytest.raises(SourceError) as e:
        KonIQ10k(root=tmp_path / "nowhere", labels=STUDY.koniq10k).manifest()
    assert str(tmp_path / "nowhere") in str(e.value) and "database.mmsp-kn.de" in str(e.value)


def test_bad_rows_are_reported_with_their_line_and_skipped(tmp_path):
    rows = [
        "1 10 0 1 5 17 38 36 15 6 5 1 1 22 1396",
        "2 11 0 1 5 17 38 36 15 6 5 1 1 22",  # a field short
        "3 12 0 1 five 17 38 36 15 6 5 1 1 22 1396",  # not a number
        "4 13 0 0 0 0 0 0 0 0 0 0 1 22 1396",  # no votes
        "5 14 0 1 5 17 38 36 15 6 5 1 1 22 1396",
    ]
    (tmp_path / "AVA.txt").write_text("\n".join(rows) + "\n")
    (tmp_path / "generic_test.jpgl").write_text("14\n")
    src = AVA(root=tmp_path, labels=STUDY.ava, check_files=False)
    df = src.annotations()
    assert df["id"].tolist() == ["10", "14"]
    path = tmp_path / "AVA.txt"
    assert src.problems == [
        f"{path}:2: expected 15 fields, found 14",
        f"{path}:3: v3 is 'five', not a number",
        f"{path}:4: no votes, left out",
    ]


def test_missing_score_and_missing_column_and_wrong_delimiter(tmp_path):
    (tmp_path / "dmos.csv").write_text("dist_img,ref_img,dmos,var\nI01_01_01.png,I01.png,,0.1\n")
    src = KADID10k(root=tmp_path, labels=STUDY.kadid10k, check_files=False)
    assert src.annotations().empty
    assert src.problems == [f"{tmp_path / 'dmos.csv'}:2: dmos is missing"]

    (tmp_path / "dmos.csv").write_text("dist_img,ref_img,var\nI01_01_01.png,I01.png,0.1\n")
    with pytest.raises(SourceError, match=r"dmos\.csv: missing column\(s\) \['dmos'\]"):
        src.annotations()

    (tmp_path / "votes_filtered.csv").write_text(f"{ds.EVA_HEADER}\n1=2=5=1=1=1=1=1=x=1=2=3=4\n")
    eva = EVA(root=tmp_path, labels=STUDY.eva, check_files=False, annotations="votes_filtered.csv")
    eva.annotations()  # the real delimiter reads fine
    (tmp_path / "votes_filtered.csv").write_text(
        ds.EVA_HEADER.replace("=", ",") + "\n1,2,5,1,1,1,1,1,x,1,2,3,4\n"
    )
    with pytest.raises(SourceError, match="looks ','-delimited, expected '='"):
        eva.annotations()


def test_missing_images_are_left_out_and_counted(trees, tmp_path):
    import shutil

    shutil.copytree(trees / "spaq", tmp_path / "spaq")
    (tmp_path / "spaq" / "TestImage" / "00003.jpg").unlink()
    src = SPAQ(root=tmp_path / "spaq", labels=DEFINITION.spaq)
    df = src.manifest()
    assert len(df) == 23 and "00003.jpg" not in " ".join(df["path"])
    assert len(src.problems) == 1 and "1 of 24 images missing" in src.problems[0]
    assert "00003.jpg" in src.problems[0]


def test_every_source_config_instantiates():
    for name in ["koniq10k", "spaq", "ava", "eva", "kadid10k", "clive", "folder"]:
        cfg = compose_group("data", name, "paths.root_dir=/tmp", "paths.output_dir=/tmp")
        (source,) = instantiate(cfg.sources, _convert_="partial").values()
        assert source.name == name and source.root.name == name


def test_mix_switches_caps_and_sampling_weights(trees, tmp_path):
    from iqs.data.datamodule import IQSDataModule

    def mix(**folder_options):
        return IQSDataModule(
            {
                "kadid10k": KADID10k(root=trees / "kadid10k", labels=DEFINITION.kadid10k,
                                     max_samples=12),
                "folder": Folder(root=trees / "folder", labels=STUDY.folder, **folder_options),
                "clive": CLIVE(root=trees / "clive", labels=DEFINITION.clive, enabled=False),
            },
            image_size=32,
            split_fractions={"train": 1.0, "val": 0.0, "test": 0.0},
        )  # fmt: skip

    dm = mix()
    dm.setup()
    assert dm.source_names == ["kadid10k", "folder"]  # clive switched off
    assert dm.manifest["source"].value_counts().to_dict() == {"kadid10k": 12, "folder": 9}
    assert dm._train_sampler("train").weights is None  # equal weights: a plain permutation

    dm = mix(weight=4.0)
    dm.setup()
    sampler = dm._train_sampler("train")
    sources = dm.manifest.loc[dm.manifest["split"] == "train", "source"].to_numpy()
    draws = []
    for epoch in range(50):
        sampler.set_epoch(epoch)
        draws += [sources[i] for i, _ in sampler]
    draws = np.array(draws)
    share = (draws == "folder").mean()  # 9 rows x 4 against 12 rows x 1: 36 / 48
    assert share == pytest.approx(0.75, abs=0.03)


def test_avas_test_list_holds_for_eva_where_avas_own_row_is_left_out(tmp_path):
    from iqs.data.datamodule import IQSDataModule

    listed, others = list(range(100, 120)), list(range(200, 220))
    ds.ava_tree(tmp_path / "ava", listed + others, test_ids=listed)
    for i in listed:  # AVA's copies missing: its rows of the listed photos are left out
        (tmp_path / "ava" / "images" / f"{i}.jpg").unlink()
    ds.eva_tree(tmp_path / "eva", listed + list(range(300, 320)), votes_per_image=3)
    dm = IQSDataModule(
        {"ava": AVA(root=tmp_path / "ava", labels=STUDY.ava),
         "eva": EVA(root=tmp_path / "eva", labels=STUDY.eva)},
        image_size=32,
    )  # fmt: skip
    df = dm.build_manifest()
    eva = df[df["source"] == "eva"].set_index("image_id")["split"]
    assert (eva[[f"ava:{i}" for i in listed]] == "test").all()
    assert set(eva[[f"ava:{i}" for i in range(300, 320)]]) > {"train"}  # seeded, as before
    assert set(df.loc[df["source"] == "ava", "split"]) <= {"train", "val"}


def test_scores_outside_the_range_and_repeated_images_are_reported_and_left_out(tmp_path):
    (tmp_path / "dmos.csv").write_text(
        "dist_img,ref_img,dmos,var\n"
        "I01_01_01.png,I01.png,4.2,0.1\n"
        "I01_01_02.png,I01.png,42,0.1\n"  # a lost decimal point
        "I01_01_01.png,I01.png,1.5,0.1\n"  # the same image again
        "I01_01_03.png,I01.png,0.5,0.1\n"
    )
    src = KADID10k(root=tmp_path, labels=STUDY.kadid10k, check_files=False)
    df = src.annotations()
    assert df["id"].tolist() == ["I01_01_01"] and df["raw_score"].tolist() == [4.2]
    path = tmp_path / "dmos.csv"
    assert src.problems == [
        f"{path}:3: dmos 42 outside 1..5, left out",
        f"{path}:5: dmos 0.5 outside 1..5, left out",
        f"{path}:4: dist_img 'I01_01_01.png' already on line 2, left out",
    ]


def test_unclosed_quote_empty_file_and_bad_bytes_are_named_by_line(tmp_path):
    path = tmp_path / "dmos.csv"
    path.write_text(
        'dist_img,ref_img,dmos,var\nI01_01_01.png,I01.png,4.2,0.1\nI01_01_02.png,"I01.png,3.1,0.1\n'
        "I01_01_03.png,I01.png,2.0,0.1\nI01_01_04.png,I01.png,2.5,0.1\n"
    )
    src = KADID10k(root=tmp_path, labels=STUDY.kadid10k, check_files=False)
    assert src.annotations()["id"].tolist() == ["I01_01_01"]
    assert src.problems == [
        f"{path}:3: expected 4 fields, found 2 (a quoted field runs from line 3 to 5)"
    ]
    # a quote that never closes: the csv module gives up at its field size limit
    path.write_text('dist_img,ref_img,dmos,var\n"x' + "I01.png,1,1\n" * 12_000)
    with pytest.raises(SourceError, match=r"dmos\.csv:2: .*quote opened on this line"):
        KADID10k(root=tmp_path, labels=STUDY.kadid10k, check_files=False).annotations()

    (tmp_path / "AVA.txt").write_text("")
    (tmp_path / "generic_test.jpgl").write_text("14\n")
    with pytest.raises(SourceError, match=r"AVA\.txt: no rows, empty file"):
        AVA(root=tmp_path, labels=STUDY.ava, check_files=False).annotations()

    # a Latin-1 byte far into the file: its line, not an offset inside the decoder's block
    good = "I01_01_{:05d}.png,I01.png,2.0,0.1\n"
    path.write_bytes(
        b"dist_img,ref_img,dmos,var\n"
        + "".join(good.format(i) for i in range(3000)).encode()
        + b"caf\xe9.png,I01.png,2.0,0.1\n"
    )
    with pytest.raises(SourceError, match=r"dmos\.csv:3002: not UTF-8 text \(byte 4 of the line"):
        KADID10k(root=tmp_path, labels=STUDY.kadid10k, check_files=False).annotations()


def test_a_label_rule_for_another_scale_is_reported(tmp_path):
    import shutil

    shutil.copytree(ds.shared("koniq10k"), tmp_path / "koniq10k")
    src = KonIQ10k(root=tmp_path / "koniq10k", labels=STUDY.koniq10k, score_column="MOS",
                   check_files=False)  # fmt: skip
    assert set(src.manifest()["label"]) == {0}  # the 0-100 rule on a 1-5 column: all Rejected
    assert any("outside the scores' range 1..5" in p for p in src.problems)
    right = KonIQ10k(root=tmp_path / "koniq10k", labels=STUDY.koniq10k, check_files=False)
    right.manifest()
    assert not any("label rule" in p for p in right.problems)
