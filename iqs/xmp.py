"""Write digiKam pick labels into XMP sidecars with Exiv2, never touching the photos.

digiKam stores the pick label as ``Xmp.digiKam.PickLabel`` (namespace
``http://www.digikam.org/ns/1.0/``): 0 none, 1 Rejected, 2 Pending, 3 Accepted. Sidecars are
``photo.jpg.xmp`` by default and ``photo.xmp`` in digiKam's "compatible" naming mode.

Exiv2 keeps process-wide state (namespace registry, XMP toolkit, log level), so every Exiv2 call
made here holds one module lock; other code using Exiv2 from other threads at the same time is
not covered by it.
"""

from __future__ import annotations

import os
import secrets
import stat
import threading
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import exiv2

DIGIKAM_NS = "http://www.digikam.org/ns/1.0/"
RDF_NS = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
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
    """A sidecar exists but cannot be read as XMP (it is then left untouched)."""


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
    with _LOCK:
        return _label_of(_read_xmp(sidecar)[0], sidecar)


def write_pick_label(
    photo: str | os.PathLike, pick_label: int, naming: str = "default", dry_run: bool = False
) -> SidecarWrite:
    """Set digiKam's pick label of ``photo`` in its XMP sidecar, keeping all other properties.

    The photo is only checked for existence. The sidecar is written through a temporary file in
    the same folder that replaces it atomically, so a failure leaves the old one byte-identical.
    An unreadable sidecar raises ``XmpError``; an equal label leaves the file alone; ``dry_run``
    only reports the action.
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

    with _LOCK:
        if target.exists():
            data, _image = _read_xmp(target)  # _image keeps the XmpData it owns alive
            previous = _label_of(data, target)
            action = "unchanged" if previous == pick_label else "updated"
            mode = stat.S_IMODE(target.stat().st_mode)
        else:
            data, previous, action, mode = exiv2.XmpData(), None, "created", None
        if action == "unchanged" or dry_run:
            return SidecarWrite(sidecar, action, previous)

        data[_pick_label_key()] = str(pick_label)
        tmp = _new_temp(target)
        try:
            # A fresh sidecar given only the XMP data, not a reopened copy of the old one: reading
            # a sidecar also converts its exif:/tiff:/photoshop: properties to Exif and IPTC, and
            # writing would convert those back lossily (GPS "48,51.5N" -> "48,51.5000000N").
            image = exiv2.ImageFactory.create(exiv2.ImageType.xmp, str(tmp))
            image.setXmpData(data)
            image.writeMetadata()
            _fsync(tmp)  # as iqs.utils.atomic_write: a crash must not leave an empty sidecar
            if mode is not None:
                os.chmod(tmp, mode)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return SidecarWrite(sidecar, action, previous)


def _pick_label_key() -> str:
    # Recent Exiv2 releases know the digiKam schema; older ones (or a caller that registered
    # another prefix for it) need the prefix looked up or registered.
    prefix = exiv2.XmpProperties.prefix(DIGIKAM_NS)
    if not prefix:
        exiv2.XmpProperties.registerNs(DIGIKAM_NS, "digiKam")
        prefix = "digiKam"
    return f"Xmp.{prefix}.PickLabel"


def _read_xmp(sidecar: Path) -> tuple[exiv2.XmpData, exiv2.Image]:
    """Parse ``sidecar`` (read-only) and return its XMP data and the image that owns it."""
    try:
        image = exiv2.ImageFactory.open(str(sidecar))
        image.readMetadata()
    except exiv2.Exiv2Error as exc:
        raise XmpError(f"cannot read XMP sidecar {sidecar}: {exc.message}") from exc
    if image.imageType() != exiv2.ImageType.xmp:
        raise XmpError(f"{sidecar} is not an XMP sidecar (Exiv2 sees {image.mimeType()})")
    data = image.xmpData()
    # Exiv2 only logs a packet it fails to decode and returns no properties, so an empty result
    # is trusted only when the file really holds no properties; otherwise writing would wipe them.
    if not len(data) and not _is_empty_packet(sidecar.read_bytes()):
        raise XmpError(f"cannot decode the XMP packet of sidecar {sidecar}")
    return data, image


def _is_empty_packet(raw: bytes) -> bool:
    """True when ``raw`` is blank or well-formed XMP whose rdf:Description nodes are all empty."""
    if not raw.strip():
        return True
    try:
        root = ET.fromstring(raw)
    except ET.ParseError:
        return False
    if root.tag != f"{{{RDF_NS}}}RDF" and root.find(f".//{{{RDF_NS}}}RDF") is None:
        return False
    return all(
        len(node) == 0 and set(node.attrib) <= {f"{{{RDF_NS}}}about"}
        for node in root.iter(f"{{{RDF_NS}}}Description")
    )


def _label_of(data: exiv2.XmpData, sidecar: Path) -> int | None:
    key = _pick_label_key()
    if key not in data:  # test first: indexing a missing key would add it
        return None
    text = data[key].toString().strip()
    try:
        return int(text)
    except ValueError:
        raise XmpError(f"{sidecar}: {key} is not an integer: {text!r}") from None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _new_temp(target: Path) -> Path:
    """Create an empty hidden temporary file beside ``target`` and return its path."""
    # Not tempfile.mkstemp: its 0600 mode would stick to new sidecars, whereas os.open with 0666
    # lets the umask decide like any other new file (existing sidecars get their old mode back).
    for _ in range(100):
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"no free temporary name beside {target}")
