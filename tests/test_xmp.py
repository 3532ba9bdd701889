"""Pick labels written into XMP sidecars: naming, preservation of other metadata, atomicity."""

from __future__ import annotations

import hashlib
import os
import re
import stat
import xml.etree.ElementTree as ET
from pathlib import Path

import exiv2
import pytest
from PIL import Image

from iqs import xmp
from iqs.xmp import SidecarWrite, XmpError, read_pick_label, sidecar_path, write_pick_label

NS = {
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "dc": "http://purl.org/dc/elements/1.1/",
    "xmp": "http://ns.adobe.com/xap/1.0/",
    "digiKam": "http://www.digikam.org/ns/1.0/",
    "lr": "http://ns.adobe.com/lightroom/1.0/",
    "exif": "http://ns.adobe.com/exif/1.0/",
    "iqstest": "http://example.org/iqs-test/1.0/",
}

# What digiKam, Lightroom and others leave in a sidecar, with a pick label in element form.
REALISTIC = """<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="XMP Core 4.4.0-Exiv2">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:digiKam="http://www.digikam.org/ns/1.0/"
    xmlns:lr="http://ns.adobe.com/lightroom/1.0/"
    xmlns:exif="http://ns.adobe.com/exif/1.0/"
    xmlns:iqstest="http://example.org/iqs-test/1.0/"
    xmp:Rating="4"
    digiKam:ColorLabel="3"
    exif:GPSLatitude="48,51.5N"
    iqstest:Reviewer="Ada">
   <digiKam:PickLabel>1</digiKam:PickLabel>
   <dc:title><rdf:Alt><rdf:li xml:lang="x-default">Sunset</rdf:li></rdf:Alt></dc:title>
   <dc:description><rdf:Alt><rdf:li xml:lang="x-default">On the beach</rdf:li></rdf:Alt>
   </dc:description>
   <dc:subject><rdf:Bag><rdf:li>beach</rdf:li><rdf:li>sunset</rdf:li></rdf:Bag></dc:subject>
   <digiKam:TagsList>
    <rdf:Seq><rdf:li>Places/Beach</rdf:li><rdf:li>Time/Sunset</rdf:li></rdf:Seq>
   </digiKam:TagsList>
   <lr:hierarchicalSubject><rdf:Bag><rdf:li>Places|Beach</rdf:li></rdf:Bag>
   </lr:hierarchicalSubject>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="w"?>
"""

# Everything in REALISTIC but the pick label, as a plain XML parser sees it.
KEPT = {
    "dc:title": ["Sunset"],
    "dc:description": ["On the beach"],
    "dc:subject": ["beach", "sunset"],
    "xmp:Rating": "4",
    "digiKam:TagsList": ["Places/Beach", "Time/Sunset"],
    "digiKam:ColorLabel": "3",
    "lr:hierarchicalSubject": ["Places|Beach"],
    # Exiv2 would reformat this as "48,51.5000000N" if it round-tripped it through Exif.
    "exif:GPSLatitude": "48,51.5N",
    "iqstest:Reviewer": "Ada",
}


def xmp_property(path: Path, name: str) -> str | list[str] | None:
    """Read ``prefix:Name`` from a sidecar with ElementTree, in attribute or element form."""
    prefix, local = name.split(":")
    tag = f"{{{NS[prefix]}}}{local}"
    for desc in ET.parse(path).getroot().iter(f"{{{NS['rdf']}}}Description"):
        if tag in desc.attrib:
            return desc.attrib[tag]
        element = desc.find(tag)
        if element is not None:
            items = element.findall(".//rdf:li", NS)
            return [li.text for li in items] if items else (element.text or "").strip()
    return None


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "photo.jpg"
    Image.new("RGB", (16, 12), (200, 120, 40)).save(path, quality=90)
    return path


@pytest.fixture
def realistic(photo: Path) -> Path:
    sidecar = sidecar_path(photo)
    sidecar.write_text(REALISTIC, encoding="utf-8")
    return sidecar


def test_sidecar_naming_modes(tmp_path: Path) -> None:
    photo = tmp_path / "IMG_0001.CR2"
    assert sidecar_path(photo) == tmp_path / "IMG_0001.CR2.xmp"
    assert sidecar_path(str(photo), "default") == tmp_path / "IMG_0001.CR2.xmp"
    assert sidecar_path(photo, "compatible") == tmp_path / "IMG_0001.xmp"
    with pytest.raises(ValueError, match=r"default.*compatible"):
        sidecar_path(photo, "darktable")


def test_creates_sidecar_and_never_touches_the_photo(photo: Path) -> None:
    before, mtime = digest(photo), photo.stat().st_mtime_ns
    result = write_pick_label(photo, 3)
    sidecar = photo.parent / "photo.jpg.xmp"
    assert result == SidecarWrite(sidecar, "created", None)
    assert read_pick_label(sidecar) == 3
    assert xmp_property(sidecar, "digiKam:PickLabel") == "3"
    assert (digest(photo), photo.stat().st_mtime_ns) == (before, mtime)
    assert leftovers(photo.parent) == []
    # A new sidecar gets an ordinary file mode, not mkstemp's private 0600.
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(sidecar.stat().st_mode) == 0o666 & ~umask


def test_update_keeps_every_other_property(photo: Path, realistic: Path) -> None:
    assert xmp_property(realistic, "digiKam:PickLabel") == "1"  # element form before
    for name, value in KEPT.items():
        assert xmp_property(realistic, name) == value, name

    result = write_pick_label(photo, 2)

    assert result == SidecarWrite(realistic, "updated", 1)
    assert xmp_property(realistic, "digiKam:PickLabel") == "2"
    for name, value in KEPT.items():
        assert xmp_property(realistic, name) == value, name
    # Exiv2 sees the same, the custom namespace and the language qualifier included.
    image = exiv2.ImageFactory.open(str(realistic))
    image.readMetadata()
    data = image.xmpData()
    assert data["Xmp.iqstest.Reviewer"].toString() == "Ada"
    assert data["Xmp.dc.title"].toString() == 'lang="x-default" Sunset'
    assert read_pick_label(realistic) == 2
    assert leftovers(photo.parent) == []


def test_second_run_is_unchanged_and_a_new_label_updates(photo: Path, realistic: Path) -> None:
    assert write_pick_label(photo, 3).action == "updated"
    written, mtime = realistic.read_bytes(), realistic.stat().st_mtime_ns

    assert write_pick_label(photo, 3) == SidecarWrite(realistic, "unchanged", 3)
    assert realistic.read_bytes() == written
    assert realistic.stat().st_mtime_ns == mtime

    assert write_pick_label(photo, 1) == SidecarWrite(realistic, "updated", 3)
    assert read_pick_label(realistic) == 1
    assert xmp_property(realistic, "dc:subject") == ["beach", "sunset"]


def test_update_keeps_the_sidecar_file_mode(photo: Path, realistic: Path) -> None:
    realistic.chmod(0o640)
    write_pick_label(photo, 2)
    assert stat.S_IMODE(realistic.stat().st_mode) == 0o640


def test_interrupted_write_leaves_old_sidecar_and_no_temp(
    photo: Path, realistic: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = realistic.read_bytes()

    def fail(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(xmp.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_pick_label(photo, 3)
    assert realistic.read_bytes() == before
    assert leftovers(photo.parent) == []

    realistic.unlink()
    with pytest.raises(OSError, match="disk full"):
        write_pick_label(photo, 3)
    assert sorted(p.name for p in photo.parent.iterdir()) == ["photo.jpg"]


@pytest.mark.parametrize(
    "content",
    [
        b"this is not XMP at all\n",
        # Well-formed enough to start, broken later: Exiv2 only logs this and returns no data.
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
        b'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
        b'xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:Rating="5"><oops></x:xmpmeta>',
        b"\xff\xd8\xff\xe0 a JPEG where the sidecar should be",
    ],
    ids=["garbage", "broken-xml", "jpeg-bytes"],
)
def test_unreadable_sidecar_raises_and_is_untouched(photo: Path, content: bytes) -> None:
    sidecar = sidecar_path(photo)
    sidecar.write_bytes(content)
    with pytest.raises(XmpError, match=re.escape("photo.jpg.xmp")):
        write_pick_label(photo, 2)
    with pytest.raises(XmpError, match=re.escape("photo.jpg.xmp")):
        read_pick_label(sidecar)
    assert sidecar.read_bytes() == content
    assert leftovers(photo.parent) == []


def test_image_file_as_sidecar_is_refused(photo: Path) -> None:
    # A JPEG carrying XMP: Exiv2 reads its properties fine, but rewriting it as a sidecar would
    # throw the picture away.
    sidecar = sidecar_path(photo)
    sidecar.write_bytes(photo.read_bytes())
    image = exiv2.ImageFactory.open(str(sidecar))
    image.readMetadata()
    image.xmpData()["Xmp.xmp.Rating"] = "5"
    image.writeMetadata()
    content = sidecar.read_bytes()
    with pytest.raises(XmpError, match="not an XMP sidecar"):
        write_pick_label(photo, 2)
    assert sidecar.read_bytes() == content


def test_empty_packet_is_filled(photo: Path) -> None:
    sidecar = sidecar_path(photo)
    sidecar.write_text(
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
        'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about=""/></rdf:RDF></x:xmpmeta>'
    )
    assert read_pick_label(sidecar) is None
    assert write_pick_label(photo, 1) == SidecarWrite(sidecar, "updated", None)
    assert read_pick_label(sidecar) == 1


def test_dry_run_writes_nothing(photo: Path) -> None:
    sidecar = sidecar_path(photo)
    assert write_pick_label(photo, 2, dry_run=True) == SidecarWrite(sidecar, "created", None)
    assert sorted(p.name for p in photo.parent.iterdir()) == ["photo.jpg"]

    sidecar.write_text(REALISTIC, encoding="utf-8")
    before, mtime = sidecar.read_bytes(), sidecar.stat().st_mtime_ns
    assert write_pick_label(photo, 2, dry_run=True) == SidecarWrite(sidecar, "updated", 1)
    assert write_pick_label(photo, 1, dry_run=True) == SidecarWrite(sidecar, "unchanged", 1)
    assert (sidecar.read_bytes(), sidecar.stat().st_mtime_ns) == (before, mtime)
    assert sorted(p.name for p in photo.parent.iterdir()) == ["photo.jpg", "photo.jpg.xmp"]


def test_compatible_naming_writes_photo_xmp(photo: Path) -> None:
    result = write_pick_label(photo, 1, naming="compatible")
    assert result == SidecarWrite(photo.parent / "photo.xmp", "created", None)
    assert read_pick_label(photo.parent / "photo.xmp") == 1
    assert not (photo.parent / "photo.jpg.xmp").exists()


def test_read_pick_label_without_sidecar_or_property(photo: Path) -> None:
    sidecar = sidecar_path(photo)
    assert read_pick_label(sidecar) is None
    sidecar.write_text(REALISTIC.replace("<digiKam:PickLabel>1</digiKam:PickLabel>", ""))
    assert read_pick_label(sidecar) is None
    assert write_pick_label(photo, 2) == SidecarWrite(sidecar, "updated", None)


@pytest.mark.parametrize("label", [0, 4, -1, True])
def test_invalid_label_raises(photo: Path, label: int) -> None:
    with pytest.raises(ValueError, match="pick_label"):
        write_pick_label(photo, label)
    assert not sidecar_path(photo).exists()


def test_missing_photo_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_pick_label(tmp_path / "gone.jpg", 3)
    assert list(tmp_path.iterdir()) == []


def packet(declarations: str, properties: str) -> str:
    return (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
        f'xmlns:rdf="{NS["rdf"]}"><rdf:Description rdf:about="" {declarations} {properties}/>'
        "</rdf:RDF></x:xmpmeta>"
    )


def new_photo(folder: Path, name: str) -> Path:
    path = folder / name
    Image.new("RGB", (8, 8)).save(path, format="JPEG")
    return path


def test_a_prefix_one_sidecar_binds_elsewhere_does_not_move_the_next_ones(tmp_path: Path) -> None:
    # Exiv2 names properties by prefix, process-wide: before, b's Lightroom property was written
    # into a's namespace because a bound "lr" to it.
    a, b = new_photo(tmp_path, "a.jpg"), new_photo(tmp_path, "b.jpg")
    mine = "http://example.com/mytool/1.0/"
    sidecar_path(a).write_text(packet(f'xmlns:lr="{mine}"', 'lr:foo="A"'))
    sidecar_path(b).write_text(packet(f'xmlns:lr="{NS["lr"]}"', 'lr:privateRTKInfo="B"'))
    write_pick_label(a, 3)
    write_pick_label(b, 1)
    assert (
        ET.parse(sidecar_path(a)).getroot().find(".//rdf:Description", NS).get(f"{{{mine}}}foo")
        == "A"
    )
    assert xmp_property(sidecar_path(b), "lr:privateRTKInfo") == "B"
    assert xmp_property(sidecar_path(b), "digiKam:PickLabel") == "1"


@pytest.mark.parametrize(
    "declaration, prop",
    [
        # Exiv2 would write the namespace as "http://example.com/foo/": another namespace
        ('xmlns:foo="http://example.com/foo"', 'foo:bar="C"'),
        # the label would land in this other namespace, where digiKam never looks
        ('xmlns:digiKam="http://example.com/not-digikam/"', 'digiKam:x="D"'),
    ],
    ids=["uri-without-slash", "digiKam-prefix-elsewhere"],
)
def test_a_sidecar_exiv2_cannot_rewrite_faithfully_is_refused_and_untouched(
    photo: Path, declaration: str, prop: str
) -> None:
    sidecar = sidecar_path(photo)
    sidecar.write_text(packet(declaration, prop))
    before = sidecar.read_bytes()
    with pytest.raises(XmpError, match=r"photo\.jpg\.xmp: Exiv2 cannot rewrite"):
        write_pick_label(photo, 3)
    assert sidecar.read_bytes() == before
    assert leftovers(photo.parent) == []
    # and nothing of it leaks into the next sidecar
    other = new_photo(photo.parent, "other.jpg")
    write_pick_label(other, 3)
    assert xmp_property(sidecar_path(other), "digiKam:PickLabel") == "3"


def test_update_keeps_a_lightroom_and_digikam_sidecar_with_regions_and_history(
    photo: Path,
) -> None:
    sidecar = sidecar_path(photo)
    sidecar.write_text(RICH, encoding="utf-8")
    assert write_pick_label(photo, 3) == SidecarWrite(sidecar, "updated", 2)
    root = ET.parse(sidecar).getroot()
    area = "{http://ns.adobe.com/xmp/sType/Area#}"
    regions = "{http://www.metadataworkinggroup.com/schemas/regions/}"
    assert [e.get(f"{area}x") for e in root.iter(f"{regions}Area")] == ["0.42", "0.62"]
    assert [e.get(f"{regions}Name") for e in root.iter(f"{{{NS['rdf']}}}Description")
            if e.get(f"{regions}Name")] == ["Ada", "Bob"]  # fmt: skip
    assert xmp_property(sidecar, "dc:title") == ["Halloween", "Halloween auf Deutsch"]
    assert xmp_property(sidecar, "digiKam:TagsList") == ["People/Ada", "People/Bob"]
    assert xmp_property(sidecar, "digiKam:PickLabel") == "3"
    history = [li.attrib for li in root.iter(f"{{{NS['rdf']}}}li") if li.attrib
               and "ResourceEvent" in next(iter(li.attrib))]  # fmt: skip
    assert [h["{http://ns.adobe.com/xap/1.0/sType/ResourceEvent#}action"] for h in history] == [
        "derived", "saved",
    ]  # fmt: skip


def test_read_only_sidecar_is_left_alone(photo: Path, realistic: Path) -> None:
    realistic.chmod(0o444)
    before = realistic.read_bytes()
    with pytest.raises(XmpError, match=r"photo\.jpg\.xmp is read-only"):
        write_pick_label(photo, 3)
    assert realistic.read_bytes() == before
    assert stat.S_IMODE(realistic.stat().st_mode) == 0o444


def test_dangling_symlinked_sidecar_names_the_sidecar(photo: Path) -> None:
    sidecar_path(photo).symlink_to(photo.parent / "gone" / "photo.jpg.xmp")
    with pytest.raises(XmpError, match=r"photo\.jpg\.xmp links to .*gone.* does not exist"):
        write_pick_label(photo, 3)
    assert not (photo.parent / "gone").exists()


def test_a_file_name_that_is_not_utf8_works(tmp_path: Path) -> None:
    photo = new_photo(tmp_path, os.fsdecode(b"caf\xe9.jpg"))  # Latin-1 name from an old camera
    assert write_pick_label(photo, 2).action == "created"
    assert read_pick_label(sidecar_path(photo)) == 2
    assert os.fsencode(sidecar_path(photo).name) == b"caf\xe9.jpg.xmp"


# Lightroom's and digiKam's properties in two rdf:Description nodes: edit history, tone curve,
# face regions (MWG) as nested structures, a title in two languages.
RICH = """<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="Adobe XMP Core 5.6-c140 79.160451">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:xmpMM="http://ns.adobe.com/xap/1.0/mm/"
    xmlns:stEvt="http://ns.adobe.com/xap/1.0/sType/ResourceEvent#"
    xmlns:crs="http://ns.adobe.com/camera-raw-settings/1.0/"
    xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/"
    xmp:CreatorTool="Adobe Photoshop Lightroom Classic 9.0 (Windows)"
    xmp:ModifyDate="2019-11-02T14:05:27+01:00"
    xmp:Rating="5"
    xmpMM:DocumentID="xmp.did:0f3b2a1c-1f2e-4c4b-9b1a-2f3c4d5e6f70"
    crs:WhiteBalance="As Shot"
    crs:Exposure2012="+0.35"
    photoshop:DateCreated="2019-10-31T17:42:10.25">
   <xmpMM:History>
    <rdf:Seq>
     <rdf:li stEvt:action="derived" stEvt:parameters="converted from image/x-canon-cr2"/>
     <rdf:li stEvt:action="saved" stEvt:when="2019-11-02T14:05:27+01:00" stEvt:changed="/metadata"/>
    </rdf:Seq>
   </xmpMM:History>
   <crs:ToneCurvePV2012><rdf:Seq><rdf:li>0, 0</rdf:li><rdf:li>255, 255</rdf:li></rdf:Seq>
   </crs:ToneCurvePV2012>
  </rdf:Description>
  <rdf:Description rdf:about=""
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:digiKam="http://www.digikam.org/ns/1.0/"
    xmlns:mwg-rs="http://www.metadataworkinggroup.com/schemas/regions/"
    xmlns:stDim="http://ns.adobe.com/xap/1.0/sType/Dimensions#"
    xmlns:stArea="http://ns.adobe.com/xmp/sType/Area#"
    digiKam:ColorLabel="2">
   <dc:title>
    <rdf:Alt>
     <rdf:li xml:lang="x-default">Halloween</rdf:li>
     <rdf:li xml:lang="de-DE">Halloween auf Deutsch</rdf:li>
    </rdf:Alt>
   </dc:title>
   <mwg-rs:Regions rdf:parseType="Resource">
    <mwg-rs:AppliedToDimensions stDim:w="6000" stDim:h="4000" stDim:unit="pixel"/>
    <mwg-rs:RegionList>
     <rdf:Bag>
      <rdf:li>
       <rdf:Description mwg-rs:Name="Ada" mwg-rs:Type="Face">
        <mwg-rs:Area stArea:x="0.42" stArea:y="0.31" stArea:w="0.1" stArea:h="0.15"/>
       </rdf:Description>
      </rdf:li>
      <rdf:li>
       <rdf:Description mwg-rs:Name="Bob" mwg-rs:Type="Face">
        <mwg-rs:Area stArea:x="0.62" stArea:y="0.33" stArea:w="0.09" stArea:h="0.14"/>
       </rdf:Description>
      </rdf:li>
     </rdf:Bag>
    </mwg-rs:RegionList>
   </mwg-rs:Regions>
   <digiKam:TagsList><rdf:Seq><rdf:li>People/Ada</rdf:li><rdf:li>People/Bob</rdf:li></rdf:Seq>
   </digiKam:TagsList>
   <digiKam:PickLabel>2</digiKam:PickLabel>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="w"?>
"""
