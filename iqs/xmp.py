"""Write digiKam pick labels into XMP sidecars with Exiv2, never touching the photos.

digiKam stores the pick label as ``Xmp.digiKam.PickLabel`` (namespace
``http://www.digikam.org/ns/1.0/``): 0 none, 1 Rejected, 2 Pending, 3 Accepted. Sidecars are
``photo.jpg.xmp`` by default and ``photo.xmp`` in digiKam's "compatible" naming mode.

Exiv2 only parses and serialises here; Python reads and writes the files (so any file name
works). Exiv2 keeps process-wide state (namespace registry, XMP toolkit, log level), so every
Exiv2 call made here holds one module lock, and the namespaces registered by the sidecar read
before are forgotten before the next is read: Exiv2 names properties by prefix, and a prefix
that one sidecar bound to its own namespace would otherwise move the properties of every later
sidecar using that prefix into it. Other code using Exiv2 in the same process loses the
namespaces it registered, and is not covered by the lock from other threads.

Exiv2 cannot keep everything (it appends "/" to a namespace URI that ends in neither "/" nor
"#", and a sidecar binding the ``digiKam`` prefix to another namespace would receive the label
there), so every rewrite is checked before it replaces the sidecar: read back with a plain XML
parser, it must hold the same properties and values as before, the pick label aside.
"""

from __future__ import annotations

import os
import threading
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import exiv2

from iqs.utils import atomic_write

DIGIKAM_NS = "http://www.digikam.org/ns/1.0/"
RDF_NS = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
PICK_LABEL_TAG = f"{{{DIGIKAM_NS}}}PickLabel"
# XML names that hold no metadata of their own: RDF's syntax, the packet wrapper, xml:lang.
_SYNTAX_NS = (f"{{{RDF_NS}}}", "{adobe:ns:meta/}", "{http://www.w3.org/XML/1998/namespace}")
PICK_LABELS = {0: "None", 1: "Rejected", 2: "Pending", 3: "Accepted"}
NAMINGS = ("default", "compatible")

_LOCK = threading.Lock()

# The XMP toolkit must be initialised once before any concurrent use; do it at import time.
exiv2.XmpParser.initialize()
# Exiv2 logs through Python's "exiv2" logger; warnings (e.g. about odd but readable packets) are
# noise for a batch writer, while errors still reach logging and failures raise exceptions.
if exiv2.LogMsg.level() < exiv2.LogMsg.Level.error:
    exiv2.LogMsg.setLevel(exiv2.LogMsg.Level.error)


class XmpError(ValueError):
    """A sidecar cannot be read as XMP, or not rewritten without loss; it is left untouched."""


@dataclass(frozen=True)
class SidecarWrite:
    """What ``write_pick_label`` did (or, in a dry run, would do) to one sidecar."""

    sidecar: Path
    action: str  # "created", "updated" or "unchanged"
    previous: int | None  # label held before, None when there was no sidecar or no label


def sidecar_path(photo: str | os.PathLike, naming: str = "default") -> Path:
    """Return the sidecar of ``photo``: ``photo.jpg.xmp`` ("default") or ``photo.xmp``."""
    photo = Path(photo)
    if naming == "default":
        return photo.with_name(photo.name + ".xmp")
    if naming == "compatible":
        return photo.with_suffix(".xmp")
    raise ValueError(f"unknown sidecar naming {naming!r}; expected one of {NAMINGS}")


def read_pick_label(sidecar: str | os.PathLike) -> int | None:
    """Return the pick label held by ``sidecar``, None if the file or the property is missing."""
    sidecar = Path(sidecar)
    if not sidecar.exists():
        return None
    raw = sidecar.read_bytes()
    with _LOCK:
        exiv2.XmpProperties.unregisterNs()
        return _label_of(_parse(raw, sidecar)[0], sidecar)


def write_pick_label(
    photo: str | os.PathLike, pick_label: int, naming: str = "default", dry_run: bool = False
) -> SidecarWrite:
    """Set digiKam's pick label of ``photo`` in its XMP sidecar, keeping all other properties.

    The photo is only checked for existence. The sidecar is written through a temporary file in
    the same folder that replaces it atomically, so a failure leaves the old one byte-identical.
    A sidecar that cannot be read, is read-only, or would lose or change anything else raises
    ``XmpError`` and is left alone; an equal label leaves the file alone; ``dry_run`` only
    reports the action.
    """
    if isinstance(pick_label, bool) or pick_label not in (1, 2, 3):
        raise ValueError(
            f"pick_label must be 1 (Rejected), 2 (Pending) or 3 (Accepted), got {pick_label!r}"
        )
    photo = Path(photo)
    sidecar = sidecar_path(photo, naming)
    if not photo.is_file():
        raise FileNotFoundError(f"photo not found: {photo}")
    # Write through a symlinked sidecar to its target instead of replacing the link itself.
    target = sidecar.resolve() if sidecar.is_symlink() else sidecar
    if not target.parent.is_dir():
        raise XmpError(f"{sidecar} links to {target}, in a folder that does not exist")
    old = target.read_bytes() if target.exists() else None
    if old is not None and not (os.access(target, os.W_OK) and target.stat().st_mode & 0o222):
        raise XmpError(f"{target} is read-only; left alone")

    with _LOCK:
        exiv2.XmpProperties.unregisterNs()
        if old is not None:
            data, _image = _parse(old, target)  # _image keeps the XmpData it owns alive
            previous = _label_of(data, target)
            action = "unchanged" if previous == pick_label else "updated"
        else:
            data, previous, action = exiv2.XmpData(), None, "created"
        if action == "unchanged" or dry_run:
            return SidecarWrite(sidecar, action, previous)
        data[_pick_label_key()] = str(pick_label)
        # A fresh sidecar given only the XMP data, not a reopened copy of the old one: reading a
        # sidecar also converts its exif:/tiff:/photoshop: properties to Exif and IPTC, and
        # writing would convert those back lossily (GPS "48,51.5N" -> "48,51.5000000N").
        image = exiv2.ImageFactory.create(exiv2.ImageType.xmp)
        image.setXmpData(data)
        image.writeMetadata()
        with image.io().mmap() as packet:
            new = bytes(packet)
    _check_only_the_label_changed(old, new, pick_label, target)
    with atomic_write(target, "wb") as f:
        f.write(new)
    return SidecarWrite(sidecar, action, previous)


def _check_only_the_label_changed(old: bytes | None, new: bytes, label: int, target: Path) -> None:
    expected = _properties(old, target) if old is not None else Counter()
    for key in [k for k in expected if k[0] == PICK_LABEL_TAG]:
        del expected[key]
    expected[(PICK_LABEL_TAG, str(label))] += 1
    written = _properties(new, target)
    if written != expected:
        lost = ", ".join(f"{k}={v!r}" for k, v in sorted(expected - written)[:3])
        gained = ", ".join(f"{k}={v!r}" for k, v in sorted(written - expected)[:3])
        raise XmpError(
            f"{target}: Exiv2 cannot rewrite this sidecar faithfully (not written: {lost or '-'}; "
            f"written instead: {gained or '-'}); left alone"
        )


def _properties(raw: bytes, sidecar: Path) -> Counter[tuple[str, str]]:
    """(property, value) pairs of an XMP packet as a plain XML parser reads it.

    Names carry their namespace URI; a value is a leaf element's text or a property attribute,
    counted under its nearest named property, so attribute and element forms, one or many
    ``rdf:Description`` nodes and the order of the text do not matter.
    """
    found: Counter[tuple[str, str]] = Counter()
    if not raw.strip():
        return found
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as exc:
        raise XmpError(f"{sidecar}: not well-formed XML ({exc}); left alone") from None

    def named(name: str) -> bool:
        return not name.startswith(_SYNTAX_NS)

    def walk(node: ET.Element, owner: str | None) -> None:
        if named(node.tag):
            owner = node.tag
        for name, value in node.attrib.items():
            if named(name):
                found[(name, value)] += 1
            elif name == f"{{{RDF_NS}}}resource" and owner:
                found[(owner, value)] += 1
        children = list(node)
        # a leaf's text is a value, unless it is a struct written as attributes
        if not children and owner and not any(named(name) for name in node.attrib):
            found[(owner, (node.text or "").strip())] += 1
        for child in children:
            walk(child, owner)

    walk(root, None)
    return found


def _pick_label_key() -> str:
    # Recent Exiv2 releases know the digiKam schema; older ones need it registered.
    prefix = exiv2.XmpProperties.prefix(DIGIKAM_NS)
    if not prefix:
        exiv2.XmpProperties.registerNs(DIGIKAM_NS, "digiKam")
        prefix = "digiKam"
    return f"Xmp.{prefix}.PickLabel"


def _parse(raw: bytes, sidecar: Path) -> tuple[exiv2.XmpData, exiv2.Image]:
    """Parse the bytes of ``sidecar`` and return its XMP data and the image that owns it."""
    try:
        image = exiv2.ImageFactory.open(raw)  # reads the bytes in place: keep ``raw`` alive
        image.readMetadata()
    except exiv2.Exiv2Error as exc:
        raise XmpError(f"cannot read XMP sidecar {sidecar}: {exc.message}") from exc
    if image.imageType() != exiv2.ImageType.xmp:
        raise XmpError(f"{sidecar} is not an XMP sidecar (Exiv2 sees {image.mimeType()})")
    data = image.xmpData()
    # Exiv2 only logs a packet it fails to decode and returns no properties, so an empty result
    # is trusted only when the file really holds no properties; otherwise writing would wipe them.
    if not len(data) and _properties(raw, sidecar):
        raise XmpError(f"cannot decode the XMP packet of sidecar {sidecar}")
    return data, image


def _label_of(data: exiv2.XmpData, sidecar: Path) -> int | None:
    key = _pick_label_key()
    if key not in data:  # test first: indexing a missing key would add it
        return None
    text = data[key].toString().strip()
    try:
        return int(text)
    except ValueError:
        raise XmpError(f"{sidecar}: {key} is not an integer: {text!r}") from None
