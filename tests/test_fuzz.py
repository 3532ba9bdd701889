"""Bad data, fuzzed: damaged annotation files and image files either parse or raise our errors.

Every annotation parser gets random bytes and valid files with random damage (truncation, extra
or missing fields, the wrong delimiter, byte-order marks, UTF-16, NaN, inf, negative and huge
scores, empty cells, duplicate ids, quotes, CRLF, names with ``..`` or absolute paths). The
property: ``manifest()`` returns rows that keep the manifest contract and stay under the data
root, or raises :class:`SourceError`; duplicate ids may instead fail validation with a
:class:`ManifestError`. No other exception, no hang, and nothing written. Image decoding gets
bytes behind JPEG/PNG/GIF/WebP/... headers and real files with changed bytes: an RGB array or
:class:`UnreadableImage`, and the cache writes its own entry and nothing else.

Each example runs in a fresh temporary folder (the function-scoped ``tmp_path`` would be shared
by all examples of a test). ``--hypothesis-show-statistics`` shows how the examples ended.
"""

from __future__ import annotations

import io
import os
import signal
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
from PIL import Image
from scipy.io import savemat

from iqs.data.images import ImageCache, UnreadableImage, read_rgb
from iqs.data.labels import NUM_CLASSES
from iqs.data.manifest import ManifestError, validate
from iqs.data.sources.ava import AVA
from iqs.data.sources.base import AnnotatedSource, SourceError
from iqs.data.sources.clive import CLIVE
from iqs.data.sources.eva import EVA
from iqs.data.sources.folder import Folder
from iqs.data.sources.kadid10k import KADID10k
from iqs.data.sources.koniq10k import KonIQ10k
from iqs.data.sources.spaq import SPAQ
from iqs.data.sources.tables import read_id_list, read_table

# Pillow warns about the damaged TIFF/EXIF data these tests feed it on purpose.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL.TiffImagePlugin")

# Every band kind: a class, a dropped band, and "otherwise" for the rest.
RULE = {
    "bands": [
        {"le": 3, "label": "rejected"},
        {"gt": 3, "lt": 5, "label": "drop"},
        {"ge": 5, "le": 60, "label": "pending"},
    ],
    "otherwise": "accepted",
}
FUZZ = settings(
    max_examples=60,
    deadline=None,  # a hang is caught by _time_limit; timings on a busy 2-core CI are noise
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SECONDS = 20  # per example: parsing a few lines or decoding a tiny image takes milliseconds


class Hang(BaseException):
    """Not an ``Exception``: the code under test cannot swallow it."""


@contextmanager
def _time_limit(seconds: float = SECONDS) -> Iterator[None]:
    def fire(signum, frame):
        raise Hang(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _files(top: Path) -> set[str]:
    """Every entry under ``top`` (files, folders, links), relative."""
    out = set()
    for folder, dirs, files in os.walk(top):
        out.update(os.path.relpath(os.path.join(folder, n), top) for n in dirs + files)
    return out


def _write(top: Path, relative: str, data: bytes) -> None:
    path = top / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@contextmanager
def dataset(files: dict[str, bytes | None], image_dir: str) -> Iterator[Path]:
    """A fresh data root ``<tmp>/ds`` holding ``files``, images ``0.jpg`` ... ``4.jpg`` in
    ``image_dir``, and photos just outside it that ``..`` names would reach."""
    with tempfile.TemporaryDirectory(prefix="iqs-fuzz-") as d:
        top = Path(d)
        root = top / "ds"
        for name, data in files.items():
            if data is not None:
                _write(root, name, data)
        for i in range(5):
            _write(root / image_dir, f"{i}.jpg", b"")
        _write(top, "up.jpg", b"")
        _write(root, "up.jpg", b"")
        yield root


def mostly(usual: st.SearchStrategy, odd: st.SearchStrategy, one_in: int = 6) -> st.SearchStrategy:
    """``odd`` about once in ``one_in`` draws: rows must often be good for any to survive."""
    return st.integers(1, one_in).flatmap(lambda i: odd if i == 1 else usual)


# -- annotation files ---------------------------------------------------------------------------

# fmt: off
ODD_NUMBERS = [
    "nan", "NaN", "inf", "-inf", "Infinity", "1e400", "-1e400", "1e-400", "0x10", "1_000",
    "\uff13", "1,5", '"4"', "5.", ".5", "+7", "--1", "None", "", " ", " 3.5 ", "9" * 400,
]
ODD_NAMES = [
    "a/b.jpg", "../up.jpg", "../../up.jpg", "/etc/passwd", "a/../../up.jpg", "./1.jpg", "..",
    ".", "..hidden.jpg", 'q"uote.jpg', '"1.jpg"', "x\x00y.jpg", "semi;colon.jpg", "eq=ual.jpg",
    "C:\\win\\x.jpg", "~/home.jpg", "\u00e9t\u00e9.jpg", "", " ", "tab\there.jpg", "sp ace.jpg",
    " 2.jpg ", "a" * 300,
]
# fmt: on
ODD_NUMBER = st.one_of(
    st.sampled_from(ODD_NUMBERS),
    st.integers(-1000, -1).map(str),
    st.integers(101, 10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)


def numbers(lo: int, hi: int, one_in: int = 6) -> st.SearchStrategy[str]:
    usual = st.one_of(
        st.integers(lo, hi).map(str),
        st.floats(lo, hi).map(lambda x: f"{x:.4g}"),
    )
    return mostly(usual, ODD_NUMBER, one_in)


NAMES = mostly(
    st.integers(0, 7).map(lambda i: f"{i}.jpg"),
    st.one_of(st.sampled_from(ODD_NAMES), st.text(max_size=12)),
    one_in=3,
)
TEXT = st.one_of(st.sampled_from(["", "x", '"', "a,b", "a=b", "a b"]), st.text(max_size=6))
FILLER = mostly(st.sampled_from(["x", "0", "1.5", "2021-01-01"]), TEXT)  # columns not read


@st.composite
def table(
    draw: st.DrawFn,
    columns: list[str],
    cells: dict[str, st.SearchStrategy[str]],
    delimiter: str | None,
    header: bool = True,
) -> bytes:
    """A delimited text file in the expected layout, with random damage."""
    names = list(columns)
    if header and draw(st.integers(0, 7)) == 0:  # a damaged header
        how = draw(st.sampled_from(["drop", "dup", "shuffle", "case", "pad", "rename"]))
        i = draw(st.integers(0, len(names) - 1))
        if how == "drop":
            names.pop(i)
        elif how == "dup":
            names.insert(i, names[i])
        elif how == "shuffle":
            names = draw(st.permutations(names))
        elif how == "case":
            names[i] = names[i].upper()
        elif how == "pad":
            names[i] = f" {names[i]} "
        else:
            names[i] = draw(TEXT)
    rows = []
    for _ in range(draw(st.integers(0, 8))):
        row = [draw(cells.get(c, FILLER)) for c in names]
        how = draw(st.integers(0, 11))
        if how == 0 and row:  # missing fields
            row = row[: draw(st.integers(0, len(row) - 1))]
        elif how == 1:  # extra fields
            row += draw(st.lists(TEXT, min_size=1, max_size=3))
        rows.append(row)
    if rows and draw(st.booleans()):  # duplicate rows (duplicate ids)
        rows += draw(st.lists(st.sampled_from(rows), max_size=3))
    sep = delimiter
    if draw(st.integers(0, 7)) == 0:  # the wrong delimiter
        sep = draw(st.sampled_from([",", ";", "\t", "=", " ", "|"]))
    if sep is None:  # runs of whitespace
        sep = draw(st.sampled_from([" ", " ", "\t", "  "]))
    quote = draw(st.sampled_from(["{}"] * 10 + ['"{}"', "'{}'"]))
    lines = ([sep.join(quote.format(n) for n in names)] if header else []) + [
        sep.join(quote.format(c) for c in row) for row in rows
    ]
    eol = draw(st.sampled_from(["\n", "\n", "\r\n", "\r"]))
    text = eol.join(lines) + draw(st.sampled_from(["", eol, eol * 2]))
    if draw(st.integers(0, 4)) == 0:  # cut anywhere, mid-line included
        text = text[: draw(st.integers(0, len(text)))]
    encoding = "utf-8"
    if draw(st.integers(0, 4)) == 0:
        encoding = draw(st.sampled_from(["utf-8-sig", "utf-8-sig", "utf-16", "latin-1"]))
    data = text.encode(encoding, errors="replace")
    if draw(st.integers(0, 9)) == 0:  # a few random bytes somewhere
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(min_size=1, max_size=4)) + data[at:]
    return data


def annotation_file(valid: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Random bytes (some behind a byte-order mark) or a damaged valid file."""
    boms = st.sampled_from([b"", b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff"])
    noise = st.builds(bytes.__add__, boms, st.binary(max_size=200))
    return mostly(valid, noise, one_in=4)


def check(source: AnnotatedSource) -> pd.DataFrame | None:
    """The property every source must keep on any input; returns the validated rows."""
    root = source.root
    before = _files(root.parent)
    try:
        with _time_limit():
            df = source.manifest(include_dropped=False)
    except SourceError as e:
        assert str(e)  # a message to show
        event(f"SourceError: {str(e).removeprefix(str(root)).split(':')[1].strip()[:24]}")
        df = None
    assert _files(root.parent) == before, "a source wrote a file"
    assert all(isinstance(p, str) for p in source.problems)
    if df is None:
        return None
    try:
        df = validate(df)
    except ManifestError as e:
        # Duplicate ids in an annotation file stop the data module with this clear error; any
        # other broken contract (a NaN or out-of-range score, a bad label) is the source's bug.
        assert "duplicate image_id" in str(e), e
        event("ManifestError: duplicate image_id")
        return None
    event(f"{'some' if len(df) else 'no'} rows, {'some' if source.problems else 'no'} problems")
    assert df["score"].between(0, 1).all() and np.isfinite(df["score"]).all()
    assert df["label"].isin(range(NUM_CLASSES)).all()
    top = os.path.normpath(root) + os.sep
    for p in df["path"]:
        assert os.path.normpath(p).startswith(top), f"{p!r} is outside the data root {root}"
        assert "\x00" not in p
        if source.check_files:
            assert os.path.isfile(p)
    return df


KONIQ_COLUMNS = ["image_name", "c1", "c2", "c3", "c4", "c5", "c_total", "MOS", "SD", "MOS_zscore"]
KONIQ = table(
    KONIQ_COLUMNS,
    {
        "image_name": NAMES,
        **{c: numbers(0, 80, one_in=20) for c in ["c1", "c2", "c3", "c4", "c5"]},
        "MOS": numbers(1, 5),
        "MOS_zscore": numbers(0, 100),
    },
    ",",
)
KONIQ_SETS = table(
    ["image_name", "set"],
    {"image_name": NAMES, "set": st.sampled_from(["training", "validation", "test", "", "x"])},
    ",",
)


@FUZZ
@given(
    scores=annotation_file(KONIQ),
    sets=st.none() | annotation_file(KONIQ_SETS),
    score_column=st.sampled_from(["MOS_zscore", "MOS"]),
    check_files=st.booleans(),
)
def test_koniq_scores_and_sets_files(scores, sets, score_column, check_files):
    files = {
        "koniq10k_scores_and_distributions.csv": scores,
        "koniq10k_distributions_sets.csv": sets,
    }
    with dataset(files, "1024x768") as root:
        src = KonIQ10k(root=root, labels=RULE, score_column=score_column, check_files=check_files)
        df = check(src)
        if df is not None:
            assert df["split"].isin(["train", "val", "test", ""]).all()


SPAQ_CSV = table(
    ["Image name", "MOS", "Brightness"],
    {"Image name": NAMES, "MOS": numbers(0, 100), "Brightness": numbers(0, 100)},
    ",",
)


def _xlsx(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_excel(buf, index=False, engine="openpyxl")
    return buf.getvalue()


GOOD_XLSX = _xlsx(pd.DataFrame({"Image name": ["1.jpg", "2.jpg"], "MOS": [42.0, 71.5]}))


@st.composite
def damaged(draw: st.DrawFn, good: bytes, keep: int = 0) -> bytes:
    """``good`` with a few bytes changed (past its first ``keep``) and maybe cut short."""
    data = bytearray(good)
    for _ in range(draw(st.integers(0, 6))):
        at = draw(st.integers(min(keep, len(data) - 1), len(data) - 1))
        data[at] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        del data[draw(st.integers(0, len(data))) :]
    return bytes(data)


@FUZZ
@given(
    csv=st.none() | annotation_file(SPAQ_CSV),
    xlsx=mostly(st.none(), st.binary(max_size=200) | damaged(GOOD_XLSX), one_in=3),
    check_files=st.booleans(),
)
def test_spaq_csv_and_excel_files(csv, xlsx, check_files):
    # The spreadsheet is looked for first, the CSV export second.
    files = {"SPAQ_annotations.csv": csv, "Annotations/MOS and Image attribute scores.xlsx": xlsx}
    with dataset(files, "TestImage") as root:
        check(SPAQ(root=root, labels=RULE, check_files=check_files))


@settings(FUZZ, max_examples=30)
@given(
    names=st.lists(NAMES, min_size=1, max_size=4),
    scores=st.lists(numbers(0, 100), min_size=1, max_size=4),
    check_files=st.booleans(),
)
def test_spaq_excel_cells(names, scores, check_files):
    """Cells of a well-formed spreadsheet: numbers as text, blanks, odd names."""
    names = [ILLEGAL_CHARACTERS_RE.sub("", name) for name in names]  # openpyxl refuses them
    n = min(len(names), len(scores))
    xlsx = _xlsx(pd.DataFrame({"Image name": names[:n], "MOS": scores[:n]}))
    with dataset({"Annotations/MOS and Image attribute scores.xlsx": xlsx}, "TestImage") as root:
        check(SPAQ(root=root, labels=RULE, check_files=check_files))


AVA_COLUMNS = ["index", "id", *(f"v{k}" for k in range(1, 11)), "tag1", "tag2", "challenge"]
AVA_IDS = mostly(st.integers(0, 7).map(str), NAMES.map(lambda s: "".join(s.split()) or "x"), 3)
AVA_VOTES = numbers(0, 30, one_in=40).map(lambda s: "".join(s.split()) or "0")
AVA_FILE = table(
    AVA_COLUMNS,
    {"id": AVA_IDS, **{f"v{k}": AVA_VOTES for k in range(1, 11)}},
    None,
    header=False,
)
TEST_LIST = st.one_of(
    st.none(),
    st.binary(max_size=60),
    st.lists(AVA_IDS).map(lambda ids: "\n".join(ids).encode()),
)


@FUZZ
@given(
    votes=annotation_file(AVA_FILE),
    test_list=TEST_LIST,
    official_split=st.booleans(),
    check_files=st.booleans(),
)
@example(  # counts that overflow (a NaN mean), a negative count (a mean of 21), 1e20 votes
    votes=b"1 1 1e308 1e308 0 0 0 0 0 0 0 0 0 0 1\n2 2 -5 0 0 0 0 0 0 0 0 9 0 0 1\n"
    b"3 3 99999999999999999999 0 0 0 0 0 0 0 0 0 0 0 1\n",
    test_list=None,
    official_split=False,
    check_files=False,
)
def test_ava_votes_and_test_list(votes, test_list, official_split, check_files):
    with dataset({"AVA.txt": votes, "generic_test.jpgl": test_list}, "images") as root:
        src = AVA(root=root, labels=RULE, official_split=official_split, check_files=check_files)
        df = check(src)
        if df is not None:
            assert df["split"].isin(["test", "trainval"] if official_split else [""]).all()
            assert df["raw_score"].between(1 - 1e-9, 10 + 1e-9).all()  # a mean of votes 1..10
            for hist in df["histogram"]:
                assert len(hist.split()) == 10 and all(float(v) >= 0 for v in hist.split())


# fmt: off
EVA_COLUMNS = ["image_id", "user_id", "score", "difficulty", "visual", "composition", "quality",
               "semantic", "vote_time", "1", "2", "3", "4"]
# fmt: on
EVA_FILE = table(
    EVA_COLUMNS,
    {"image_id": mostly(st.integers(0, 7).map(str), NAMES, 3), "score": numbers(0, 10)},
    "=",
)


@FUZZ
@given(votes=annotation_file(EVA_FILE), check_files=st.booleans())
def test_eva_votes(votes, check_files):
    with dataset({"data/votes_filtered.csv": votes}, "EVA_together") as root:
        df = check(EVA(root=root, labels=RULE, check_files=check_files))
        if df is not None:
            assert df["histogram"].str.split().map(len).eq(11).all()
            assert df["raw_score"].between(0 - 1e-9, 10 + 1e-9).all()  # a mean of votes 0..10


KADID_FILE = table(
    ["dist_img", "ref_img", "dmos", "var"],
    {"dist_img": NAMES, "ref_img": NAMES, "dmos": numbers(1, 5), "var": numbers(0, 1)},
    ",",
)


@FUZZ
@given(dmos=annotation_file(KADID_FILE), check_files=st.booleans())
def test_kadid_dmos(dmos, check_files):
    with dataset({"dmos.csv": dmos}, "images") as root:
        check(KADID10k(root=root, labels=RULE, check_files=check_files))


# fmt: off
ODD_LABELS = ["drop", "Accepted ", "-1", "3", "-2", "", "good", "1.0", "\u0663", "\u00b2",
              "9" * 5000]
# fmt: on
FOLDER_LABELS = mostly(
    st.sampled_from(["rejected", "pending", "accepted", "0", "1", "2"]),
    st.one_of(st.sampled_from(ODD_LABELS), TEXT),
)
FOLDER_CSV = st.sampled_from([["path", "score"], ["path", "label"], ["path", "score", "label"]])


@FUZZ
@given(
    labels=FOLDER_CSV.flatmap(
        lambda cols: annotation_file(
            table(cols, {"path": NAMES, "score": numbers(0, 1), "label": FOLDER_LABELS}, ",")
        )
    ),
    score_range=st.sampled_from([(0.0, 1.0), (1.0, 5.0), (-10.0, 10.0)]),
    check_files=st.booleans(),
)
def test_folder_labels_csv(labels, score_range, check_files):
    with dataset({"labels.csv": labels}, "") as root:
        check(Folder(root=root, labels=RULE, score_range=score_range, check_files=check_files))


def _mat(variables: dict) -> bytes:
    buf = io.BytesIO()
    savemat(buf, variables)
    return buf.getvalue()


def _cells(names: list) -> np.ndarray:
    cells = np.empty((1, len(names)), dtype=object)
    cells[0, :] = names
    return cells


GOOD_NAMES = _mat({"AllImages_release": _cells([f"{i}.jpg" for i in range(10)])})
GOOD_MOS = _mat({"AllMOS_release": np.linspace(10, 90, 10).reshape(1, -1)})
ODD_CELL = st.sampled_from([np.zeros((0, 0)), np.array([1.5]), np.array([["a.jpg", "b.jpg"]])])
ODD_MAT = st.sampled_from(
    [
        _mat({"a": np.ones(3), "b": np.ones(3)}),  # two variables
        _mat({"x": np.arange(10.0)}),  # numbers for names
        _mat({"x": _cells(["a", "b"])}),  # names for scores
        _mat({"x": "text"}),
        _mat({}),
    ]
)


@st.composite
def clive_files(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """The two MATLAB files: names and scores of one length (usually), some entries odd."""
    n = draw(mostly(st.integers(8, 14), st.integers(0, 7), 4))  # the first 7 are left out
    names = draw(st.lists(mostly(NAMES.filter(lambda s: "\x00" not in s), ODD_CELL, 20),
                          min_size=n, max_size=n))  # fmt: skip
    mos = draw(st.lists(mostly(st.floats(0, 100), st.floats(), 10), min_size=n, max_size=n))
    if draw(st.integers(0, 9)) == 0:  # of different lengths
        mos = mos[: draw(st.integers(0, n))] + draw(st.lists(st.floats(0, 100), max_size=2))
    images = _mat({"AllImages_release": _cells(names)})
    scores = _mat({"AllMOS_release": np.asarray(mos, dtype=np.float64).reshape(1, -1)})
    broken = st.one_of(st.binary(max_size=300), ODD_MAT)
    images = draw(mostly(st.just(images), broken | damaged(images, keep=128), 8))
    scores = draw(mostly(st.just(scores), broken | damaged(scores, keep=128), 8))
    return images, scores


@settings(FUZZ, max_examples=20)  # each example starts a MAT reader process (0.3-0.5 s)
@given(
    mat=clive_files(),
    keep_training_images=st.booleans(),
    check_files=st.booleans(),
)
def test_clive_mat_files(mat, keep_training_images, check_files):
    files = {"Data/AllImages_release.mat": mat[0], "Data/AllMOS_release.mat": mat[1]}
    with dataset(files, "Images") as root:
        src = CLIVE(
            root=root,
            labels=RULE,
            keep_training_images=keep_training_images,
            check_files=check_files,
        )
        check(src)


@settings(FUZZ, max_examples=5)  # more random bytes in test_clive_mat_files
@given(data=st.binary(max_size=300))
def test_clive_random_bytes_are_a_source_error(data):
    files = {"Data/AllImages_release.mat": data, "Data/AllMOS_release.mat": GOOD_MOS}
    refused = pytest.raises(SourceError, match=r"AllImages_release\.mat")
    with dataset(files, "Images") as root, _time_limit(), refused:
        CLIVE(root=root, labels=RULE, check_files=False).annotations()


def test_clive_mat_file_that_crashes_scipy_is_a_source_error():
    """A data tag with an unknown type code makes scipy's reader use a wild pointer: it usually
    crashes the process (SIGSEGV, SIGBUS), sometimes raises something odd."""
    tag = (9).to_bytes(4, "little") + (80).to_bytes(4, "little")  # miDOUBLE, 10 values
    assert GOOD_MOS.count(tag) == 1
    files = {
        "Data/AllImages_release.mat": GOOD_NAMES,
        "Data/AllMOS_release.mat": GOOD_MOS.replace(tag, b"\x09\x75\x00\x00" + tag[4:]),
    }
    refused = pytest.raises(SourceError, match=r"AllMOS_release\.mat: not a readable MATLAB")
    with dataset(files, "Images") as root, _time_limit(), refused:
        CLIVE(root=root, labels=RULE).annotations()


@FUZZ
@given(
    data=annotation_file(table(["a", "b", "c"], {"b": numbers(0, 9)}, ",")),
    header=st.booleans(),
    delimiter=st.sampled_from([",", ";", "=", "\t", None]),
)
def test_read_table_and_read_id_list(data, header, delimiter):
    """The shared readers: strings, finite float numbers, line numbers, or SourceError."""
    with dataset({"t.csv": data}, "") as root:
        problems: list[str] = []
        try:
            with _time_limit():
                df = read_table(root / "t.csv", ["a", "b"], ["b"], delimiter, header, problems)
        except SourceError:
            event("read_table: SourceError")
        else:
            assert list(df.columns) == ["a", "b", "_line"]
            assert df["b"].dtype == np.float64 and np.isfinite(df["b"]).all()
            assert df["_line"].is_monotonic_increasing and df["_line"].is_unique
            assert all(isinstance(p, str) for p in problems)
        try:
            with _time_limit():
                ids = read_id_list(root / "t.csv")
        except SourceError:
            event("read_id_list: SourceError")
        else:
            assert all(isinstance(i, str) and i and not i.isspace() for i in ids)


# -- image files --------------------------------------------------------------------------------

HEADERS = [
    b"\xff\xd8\xff",  # JPEG
    b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
    b"\x89PNG\r\n\x1a\n",
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
    b"GIF87a",
    b"GIF89a",
    b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    b"RIFF\x00\x00\x00\x00WEBPVP8L",
    b"BM",
    b"II*\x00",  # TIFF
    b"",
]


def _encoded(fmt: str, **kwargs) -> bytes:
    rgb = np.random.default_rng(0).integers(0, 256, (20, 28, 3), dtype=np.uint8)
    im = Image.fromarray(rgb)
    buf = io.BytesIO()
    (im.convert("P") if fmt == "GIF" else im).save(buf, fmt, **kwargs)
    return buf.getvalue()


GOOD_IMAGES = [
    _encoded("JPEG", quality=80),
    _encoded("JPEG", quality=80, progressive=True),
    _encoded("PNG"),
    _encoded("GIF"),
    _encoded("WEBP", quality=80),
    _encoded("TIFF"),
    _encoded("BMP"),
]
IMAGE_BYTES = st.one_of(
    st.builds(bytes.__add__, st.sampled_from(HEADERS), st.binary(max_size=400)),
    st.sampled_from(GOOD_IMAGES).flatmap(lambda good: damaged(good, keep=2)),
    st.sampled_from(GOOD_IMAGES).flatmap(damaged),
)


def _decodes_or_refuses(read: Callable[[], np.ndarray], max_side: int | None) -> bool:
    """``read()`` returns an RGB image (True) or raises UnreadableImage (False)."""
    try:
        with _time_limit():
            rgb = read()
    except UnreadableImage as e:
        assert e.reason and e.path
        event(f"unreadable: {e.reason[:24]}")
        return False
    assert isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8
    assert rgb.ndim == 3 and rgb.shape[2] == 3 and min(rgb.shape[:2]) >= 1, rgb.shape
    if max_side is not None:
        assert max(rgb.shape[:2]) <= max_side
    event("decoded")
    return True


@settings(FUZZ, max_examples=150)
@given(data=IMAGE_BYTES, suffix=st.sampled_from([".jpg", ".png", ".gif", ".webp", ".bin"]))
def test_read_rgb_decodes_or_raises_unreadable_image(data, suffix):
    with tempfile.TemporaryDirectory(prefix="iqs-fuzz-") as d:
        path = Path(d) / f"photo{suffix}"
        path.write_bytes(data)
        for max_side in (None, 64, 8):
            _decodes_or_refuses(lambda m=max_side: read_rgb(path, m), max_side)
        assert _files(Path(d)) == {path.name}


@FUZZ
@given(
    data=IMAGE_BYTES,
    source=st.one_of(st.sampled_from(["spaq", "../up", "/abs", ".."]), st.text(max_size=10)),
    image_id=st.one_of(st.sampled_from(ODD_NAMES), st.text(max_size=20)),
)
def test_image_cache_writes_only_its_own_entry(data, source, image_id):
    with tempfile.TemporaryDirectory(prefix="iqs-fuzz-") as d:
        top = Path(d)
        photo, root = top / "photos" / "x.jpg", top / "cache" / "root"
        _write(top, "photos/x.jpg", data)
        cache = ImageCache(root, max_side=32)
        ok = _decodes_or_refuses(lambda: cache.read(photo, source, image_id), 32)
        entry = cache.path_for(photo, source, image_id)
        assert entry.resolve().is_relative_to(root.resolve())
        made = {os.path.relpath(p, top) for p in (entry, *entry.parents) if p.is_relative_to(top)}
        want = {"photos", "photos/x.jpg"} | (made - {"."} if ok else set())
        assert _files(top) == want, "the cache left a temporary file or wrote outside its root"
        if ok:  # and serves the entry the second time
            assert _decodes_or_refuses(lambda: cache.read(photo, source, image_id), 32)
            assert _files(top) == want


@FUZZ
@given(name=st.one_of(st.sampled_from(ODD_NAMES), st.text(max_size=20)))
def test_read_rgb_on_odd_paths(name):
    """Names from annotation files: missing, a folder, a NUL byte; never another error."""
    with tempfile.TemporaryDirectory(prefix="iqs-fuzz-") as d:
        path = f"{d}{os.sep}{name}"  # joined as the manifest joins them: under d
        for max_side in (None, 32):
            _decodes_or_refuses(lambda m=max_side: read_rgb(path, m), max_side)
        assert not _files(Path(d))
