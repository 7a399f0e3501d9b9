"""Reading a replay export safely: the zip's caps, checked before anything is inflated.

The guards against a crafted file (a zip bomb, a million members, a member that
inflates 1,000-fold), apart from ``replay.RecordingStore`` so that each stays readable.
"""

from __future__ import annotations

import io
import re
import struct
import zipfile


class RecordError(ValueError):
    """A record or an export file cannot be read; the message says why, in words."""


_KEY_RE = re.compile(r"^[0-9a-f]{64}$")
#: ``manifest.json`` ``format`` and ``version`` of an export file.
EXPORT_FORMAT = "blossom-dash-replay"
EXPORT_VERSION = 1
#: Import caps, all checked against the zip's directory before anything is expanded
#: (a guard against zip bombs): total uncompressed bytes (256 MiB) ...
MAX_IMPORT_BYTES = 256 << 20
#: ... recordings in one file ...
MAX_IMPORT_ENTRIES = 50_000
#: ... zip members (each recording has at most a blob or two, plus the manifest and entries.jsonl) ...
MAX_IMPORT_MEMBERS = 2 * MAX_IMPORT_ENTRIES + 2
#: ... and the compression ratio of one member larger than ``RATIO_FREE_BYTES`` uncompressed.
MAX_COMPRESSION_RATIO = 100
RATIO_FREE_BYTES = 1 << 20
#: ``manifest.json`` is a few hundred bytes; anything bigger is not ours.
MAX_MANIFEST_BYTES = 1 << 20
_CHUNK = 1 << 20


def _open_export(data: bytes) -> zipfile.ZipFile:
    """The zip in ``data``, refused before its directory is parsed when it lists too many members.

    Raises:
        RecordError: not a zip, or more than ``MAX_IMPORT_MEMBERS`` members.
    """
    buf = io.BytesIO(data)
    try:
        # The end record states the member count; check it before ZipFile builds one
        # object per member (a small file can list millions).
        end = zipfile._EndRecData(buf)  # type: ignore[attr-defined]
    except (OSError, struct.error):
        end = None
    if not end:
        raise RecordError("The file is not a zip archive, so not a blossom-dash replay export.")
    members = int(end[zipfile._ECD_ENTRIES_TOTAL])  # type: ignore[attr-defined]
    if members > MAX_IMPORT_MEMBERS:
        raise RecordError(f"The zip holds {members:,} files; an export has at most "
                          f"{MAX_IMPORT_MEMBERS:,} ({MAX_IMPORT_ENTRIES:,} recordings).")
    try:
        return zipfile.ZipFile(buf)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise RecordError("The file is not a zip archive, so not a blossom-dash replay export.") from exc


def _check_caps(zf: zipfile.ZipFile) -> None:
    """Refuse a zip whose directory breaks an import cap; nothing is expanded.

    ``zipfile`` never inflates a member past the size its directory states (it stops
    and fails the CRC), so the stated sizes bound what reading can cost.

    Raises:
        RecordError: too many members, too large in total, or a member compressed
            more than ``MAX_COMPRESSION_RATIO``:1 beyond ``RATIO_FREE_BYTES``.
    """
    infos = zf.infolist()
    if len(infos) > MAX_IMPORT_MEMBERS:
        raise RecordError(f"The zip holds {len(infos):,} files; an export has at most {MAX_IMPORT_MEMBERS:,} "
                          f"({MAX_IMPORT_ENTRIES:,} recordings).")
    total = 0
    for info in infos:
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > RATIO_FREE_BYTES and ratio > MAX_COMPRESSION_RATIO:
            raise RecordError(f"The zip member {info.filename!r} unpacks {ratio:,.0f} times larger than it is stored "
                              f"(at most {MAX_COMPRESSION_RATIO}:1 is accepted): "
                              "it looks like a zip bomb, not an export.")
        total += info.file_size
        if total > MAX_IMPORT_BYTES:
            raise RecordError(f"The file unpacks to more than {MAX_IMPORT_BYTES >> 20:,} MiB, the import limit.")


def _check_blob(zf: zipfile.ZipFile, name: str) -> int:
    """Read member ``name`` through in chunks (its CRC is checked at the end); its size, bytes."""
    size = 0
    with zf.open(name) as member:
        while chunk := member.read(_CHUNK):
            size += len(chunk)
    return size


__all__ = ["EXPORT_FORMAT", "EXPORT_VERSION", "MAX_COMPRESSION_RATIO", "MAX_IMPORT_BYTES", "MAX_IMPORT_ENTRIES",
           "MAX_IMPORT_MEMBERS", "MAX_MANIFEST_BYTES", "RATIO_FREE_BYTES", "RecordError"]
