"""Recordings for replay: the persistent side of the response cache, and demo-set files.

A *recording* is one cached answer on disk, kept by ``diskcache`` (SQLite plus files,
safe across threads and processes) under ``<data_dir>/replay``:

- ``entries/``: request key (sha256 hex) -> one packed record (bytes);
- ``index/``: ``meta:<key>`` -> ``{"kind", "model", "created"}`` (JSON) and
  ``alias:<replay key>`` -> request key, so replay-only mode finds an answer recorded
  on another backend (an office recording replayed offline on stage).

Records hold no pickles of our classes: a result dataclass is stored as JSON (type
name and fields) with its ``bytes`` fields as separate blobs, under a format version,
so an upgrade that adds or moves a field still reads old recordings. The API key is
never part of a request key, so it is never part of a recording or an export.

An export is one ``.zip``: ``manifest.json`` (format, version, created, count,
backend), ``entries.jsonl`` (one entry a line: key, request, result) and ``blobs/``
(images and audio as plain files a person can open).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import io
import logging
import struct
import sys
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import diskcache
import orjson

from ..errors import NotRecorded
from .replay_prompts import models_for
from .replay_zip import (  # the zip's caps; the constants are re-exported from here
    _KEY_RE,
    EXPORT_FORMAT,
    EXPORT_VERSION,
    MAX_COMPRESSION_RATIO,
    MAX_IMPORT_BYTES,
    MAX_IMPORT_ENTRIES,
    MAX_IMPORT_MEMBERS,
    MAX_MANIFEST_BYTES,
    RATIO_FREE_BYTES,
    RecordError,
    _check_blob,
    _check_caps,
    _open_export,
)

log = logging.getLogger("blossom_dash.replay")

#: Version of one packed record. 1: JSON header + blobs.
RECORD_VERSION = 1
#: Request parts a replay may ignore when the caller picked them at random
#: (an image with no seed chosen: any recorded seed of the same picture will do).
LOOSE_PARTS = ("seed",)

_MAGIC = b"BDREC"


def canonical_key(parts: Mapping[str, Any]) -> str:
    """sha256 hex of ``parts`` as canonical JSON (sorted keys, ``None`` kept).

    Raises:
        TypeError: a part is not JSON-serialisable.
    """
    return hashlib.sha256(orjson.dumps(dict(parts), option=orjson.OPT_SORT_KEYS)).hexdigest()


def replay_aliases(parts: Mapping[str, Any]) -> tuple[str, ...]:
    """The backend-independent keys a recording of ``parts`` is also found under.

    Returns:
        The key of ``parts`` without ``backend``; then, when a loose part (the
        seed) is present, the key without it too.
    """
    strict = {k: v for k, v in parts.items() if k != "backend"}
    aliases = [canonical_key(strict)]
    if any(p in strict for p in LOOSE_PARTS):
        aliases.append(canonical_key({k: v for k, v in strict.items() if k not in LOOSE_PARTS}))
    return tuple(aliases)


def lookup_alias(parts: Mapping[str, Any], random_parts: Sequence[str] = ()) -> str:
    """The alias a replay-only lookup of ``parts`` uses (see ``replay_aliases``).

    Args:
        parts: The request's key parts.
        random_parts: Parts the caller picked at random rather than the user.
    """
    aliases = replay_aliases(parts)
    loose = any(p in random_parts and p in parts for p in LOOSE_PARTS)
    return aliases[-1] if loose else aliases[0]


def not_recorded(kind: str, prompt: str | None, model: str) -> NotRecorded:
    """The refusal of a request that replay-only mode cannot answer.

    Args:
        kind: ``text``, ``stream``, ``image``, ``audio``.
        prompt: What was asked (shown shortened).
        model: The model asked for.
    """
    shown = " ".join(str(prompt or "").split())
    shown = shown if len(shown) <= 80 else shown[:79] + "…"
    what = {"image": "image prompt", "audio": "text to speak"}.get(kind, "prompt")
    return NotRecorded(
        f"This {what} was not recorded for replay: “{shown}” (model {model}, these exact settings).",
        "Turn replay-only off (Controls → Replay) to ask the model, or use a prompt from the recording.",
    )


# ----- the codec: result dataclasses <-> JSON + blobs ---------------------------------


def _to_doc(value: Any, blobs: list[bytes]) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Decimal):  # a result's cost in pollen: its exact digits
        return {"$decimal": str(value)}
    if isinstance(value, (bytes, bytearray, memoryview)):
        blobs.append(bytes(value))
        return {"$blob": len(blobs) - 1}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        cls = type(value)
        fields = {f.name: _to_doc(getattr(value, f.name), blobs) for f in dataclasses.fields(value) if f.init}
        return {"$type": cls.__name__, "$module": cls.__module__, "fields": fields}
    if isinstance(value, (list, tuple)):
        return [_to_doc(v, blobs) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"$dict": {k: _to_doc(v, blobs) for k, v in value.items()}}
    raise TypeError(f"cannot record a {type(value).__name__}")


def _result_class(name: str, module: str) -> type:
    """Our dataclass named ``name``: from ``module``, else any loaded ``blossom_dash`` module.

    Only dataclasses of this package are ever built, so a crafted file cannot make
    the import run anything else; the fallback finds a class that moved modules.
    """
    candidates = []
    if module == "blossom_dash" or module.startswith("blossom_dash."):
        try:
            candidates.append(importlib.import_module(module))
        except ImportError:
            pass
    candidates += [m for n, m in list(sys.modules.items()) if n.startswith("blossom_dash") and m is not None]
    for mod in candidates:
        cls = getattr(mod, name, None)
        if isinstance(cls, type) and dataclasses.is_dataclass(cls):
            return cls
    raise RecordError(f"it holds a {name}, which this version of blossom-dash does not know")


def _from_doc(doc: Any, blobs: Sequence[bytes]) -> Any:
    if isinstance(doc, list):
        return [_from_doc(v, blobs) for v in doc]
    if not isinstance(doc, dict):
        return doc
    if "$blob" in doc:
        index = doc["$blob"]
        if not isinstance(index, int) or not 0 <= index < len(blobs):
            raise RecordError("a binary part is missing")
        return blobs[index]
    if "$dict" in doc:
        return {k: _from_doc(v, blobs) for k, v in dict(doc["$dict"]).items()}
    if "$decimal" in doc:
        try:
            return Decimal(str(doc["$decimal"]))
        except InvalidOperation as exc:
            raise RecordError("it holds a damaged amount") from exc
    if "$type" in doc:
        cls = _result_class(str(doc["$type"]), str(doc.get("$module", "")))
        given = doc.get("fields") or {}
        # Fields this version does not have are dropped; fields it added take their
        # defaults: recordings survive upgrades in both directions.
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        try:
            return cls(**{k: _from_doc(v, blobs) for k, v in given.items() if k in known})
        except TypeError as exc:
            raise RecordError(f"its {cls.__name__} lacks a field this version needs ({exc})") from exc
    raise RecordError("it holds a value of an unknown shape")


def _pack(header: dict[str, Any], blobs: Sequence[bytes]) -> bytes:
    head = orjson.dumps({**header, "blobs": [len(b) for b in blobs]})
    return b"".join([_MAGIC, struct.pack(">BI", RECORD_VERSION, len(head)), head, *blobs])


def _unpack(data: bytes) -> tuple[dict[str, Any], list[bytes]]:
    if not isinstance(data, bytes) or not data.startswith(_MAGIC) or len(data) < len(_MAGIC) + 5:
        raise RecordError("it is not a blossom-dash record")
    version, size = struct.unpack_from(">BI", data, len(_MAGIC))
    if version > RECORD_VERSION:
        raise RecordError(f"it was written by a newer blossom-dash (record version {version})")
    start = len(_MAGIC) + 5
    try:
        header = orjson.loads(data[start:start + size])
    except orjson.JSONDecodeError as exc:
        raise RecordError("its header is damaged") from exc
    blobs, pos = [], start + size
    for length in header.get("blobs", []):
        blobs.append(data[pos:pos + length])
        pos += length
    if pos != len(data):
        raise RecordError("its length does not add up (truncated or damaged)")
    return header, blobs


@dataclass(frozen=True)
class Recording:
    """One recorded answer.

    Attributes:
        key: The request key (sha256 hex of ``request``).
        value: The result dataclass as it was stored (``cached`` as it was then).
        request: The request's key parts (backend, kind, model, messages or prompt,
            parameters); never the API key.
        created: When it was recorded, epoch seconds.
        nbytes: Payload size, bytes.
        latency_ms: What the original backend call cost.
    """

    key: str
    value: Any
    request: dict[str, Any]
    created: float
    nbytes: int
    latency_ms: float


@dataclass(frozen=True)
class ImportReport:
    """What an import did.

    Attributes:
        added: New recordings written.
        skipped: Entries already recorded (kept as they were).
        total: Entries in the file.
        backend: The backend the file was recorded on (its manifest).
        created: When the file was exported (ISO 8601, UTC).
    """

    added: int
    skipped: int
    total: int
    backend: str
    created: str

    def describe(self) -> str:
        """One sentence for the page, e.g. "Added 2 of 3 recordings (1 already here), ..."."""
        when = self.created.replace("T", " ")[:16] + " UTC" if self.created else "at an unknown time"
        return (f"Added {self.added:,} of {self.total:,} recordings ({self.skipped:,} already here), "
                f"recorded on the {self.backend} backend, exported {when}.")


def _ext(data: bytes) -> str:
    for magic, ext in ((b"\x89PNG", "png"), (b"\xff\xd8", "jpg"), (b"RIFF", "wav"), (b"ID3", "mp3"),
                       (b"GIF8", "gif"), (b"OggS", "ogg")):
        if data.startswith(magic):
            return ext
    return "bin"


class RecordingStore:
    """Recorded answers on disk (``diskcache``), plus export and import.

    Thread-safe and safe across processes sharing the folder (diskcache's SQLite).
    Nothing is ever evicted: recordings stay until cleared (a demo set must not lose
    entries to a size limit).

    Args:
        directory: The folder (created if missing), e.g. ``<data_dir>/replay``.

    Raises:
        OSError: the folder cannot be created or opened.
    """

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._entries = diskcache.Cache(str(self.directory / "entries"), eviction_policy="none")
        self._index = diskcache.Cache(str(self.directory / "index"), eviction_policy="none")
        self._lock = threading.Lock()
        self._models: dict[str, list[str]] | None = None
        self._by_prompt: dict[tuple[str, str], list[str]] = {}  # valid while _models is set
        #: Records that could not be read or written (logged each time).
        self.errors = 0

    # ----- entries ---------------------------------------------------------------------

    def put(self, key: str, value: Any, *, request: Mapping[str, Any], nbytes: int, latency_ms: float,
            created: float | None = None) -> bool:
        """Record ``value`` under ``key`` (replacing an older recording of it).

        Args:
            key: The request key.
            value: A result dataclass (str/int/float/bool/None/bytes fields, nested
                dataclasses, lists and str-keyed dicts of those).
            request: The request's key parts (for display and replay aliases).
            nbytes / latency_ms: Payload size and the backend call's cost.
            created: Epoch seconds; now when omitted.

        Returns:
            True when ``key`` was not recorded before.

        Raises:
            TypeError: ``value`` holds something that cannot be recorded.
        """
        key = str(key)  # a plain str: diskcache would pickle a subclass
        blobs: list[bytes] = []
        doc = _to_doc(value, blobs)
        request = dict(request)
        header = {"format": RECORD_VERSION, "key": key, "created": time.time() if created is None else created,
                  "request": request, "nbytes": int(nbytes), "latency_ms": float(latency_ms), "result": doc}
        return self._write(key, header, blobs)

    def _write(self, key: str, header: dict[str, Any], blobs: Sequence[bytes]) -> bool:
        request = header["request"]
        meta = {"kind": request.get("kind", ""), "model": request.get("model", ""), "created": header["created"]}
        new = key not in self._entries
        self._entries.set(key, _pack(header, blobs))
        with self._index.transact():
            self._index.set(f"meta:{key}", orjson.dumps(meta).decode())
            for alias in replay_aliases(request):
                self._index.set(f"alias:{alias}", key)
        with self._lock:
            self._models = None
            self._by_prompt = {}
        return new

    def get(self, key: str, *, max_age_s: float | None = None) -> Recording | None:
        """The recording of ``key``, or None (absent, older than ``max_age_s``, unreadable)."""
        key = str(key)
        data = self._entries.get(key)
        if data is None:
            return None
        try:
            header, blobs = _unpack(data)
            if max_age_s is not None and time.time() - float(header["created"]) > max_age_s:
                return None
            value = _from_doc(header["result"], blobs)
        except (RecordError, KeyError, TypeError, ValueError) as exc:
            self.errors += 1
            log.warning("recording %s is unreadable: %s", key[:12], exc)
            return None
        return Recording(key, value, dict(header.get("request") or {}), float(header["created"]),
                         int(header.get("nbytes", 0)), float(header.get("latency_ms", 0.0)))

    def resolve(self, alias: str) -> str | None:
        """The request key last recorded under a replay alias, or None."""
        key = self._index.get(f"alias:{str(alias)}")
        return key if isinstance(key, str) else None

    def __contains__(self, key: object) -> bool:
        return str(key) in self._entries

    def count(self) -> int:
        """How many answers are recorded."""
        return len(self._entries)

    def volume(self) -> int:
        """Bytes on disk (records, index and SQLite files)."""
        return int(self._entries.volume() + self._index.volume())

    def recorded_models(self, kind: str) -> list[str]:
        """Models with recordings of ``kind`` (``"text"``, ``"image"``, ...), most recorded first, then by name."""
        with self._lock:
            models = self._models
        if models is None:
            counts: dict[str, Counter[str]] = {}
            for name in self._index.iterkeys():
                if isinstance(name, str) and name.startswith("meta:"):
                    try:
                        meta = orjson.loads(self._index.get(name) or "{}")
                    except orjson.JSONDecodeError:
                        continue
                    counts.setdefault(str(meta.get("kind", "")), Counter())[str(meta.get("model", ""))] += 1
            models = {k: [m for m, _ in sorted(c.items(), key=lambda mc: (-mc[1], mc[0])) if m]
                      for k, c in counts.items()}
            with self._lock:
                self._models = models
        return list(models.get(kind, []))

    def models_recorded_for(self, kind: str, prompt: str) -> list[str]:
        """Models with a one-turn recording of ``prompt`` as ``kind`` (``replay_prompts.models_for``):
        most recorded first, then by name. Every record is read once per store change."""
        key = (kind, prompt.strip())
        with self._lock:
            found = self._by_prompt.get(key) if self._models is not None else None
        if found is None:
            found = models_for((h.get("request") or {} for _k, h, _b in self._records()), kind, prompt)
            self.recorded_models(kind)  # sets _models, which a write clears with _by_prompt
            with self._lock:
                if self._models is not None:
                    self._by_prompt[key] = found
        return list(found)

    def clear(self) -> int:
        """Delete every recording.

        Returns:
            How many were deleted.
        """
        n = self.count()
        self._entries.clear()
        self._index.clear()
        with self._lock:
            self._models = None
            self._by_prompt = {}
        return n

    def close(self) -> None:
        """Close the SQLite connections (the files stay)."""
        self._entries.close()
        self._index.close()

    def _records(self) -> Iterator[tuple[str, dict[str, Any], list[bytes]]]:
        for key in self._entries.iterkeys():
            data = self._entries.get(key)
            if data is None:
                continue  # deleted meanwhile
            try:
                header, blobs = _unpack(data)
            except RecordError as exc:
                self.errors += 1
                log.warning("recording %s is unreadable, not exported: %s", str(key)[:12], exc)
                continue
            yield str(key), header, blobs

    # ----- export and import -----------------------------------------------------------

    def export(self, backend: Mapping[str, Any]) -> bytes:
        """Every recording as one ``.zip`` (see the module docstring for the layout).

        Args:
            backend: Who recorded it, for the manifest (``{"name", "base_url"}``).

        Returns:
            The zip file's bytes.
        """
        lines: list[bytes] = []
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for key, header, blobs in self._records():
                names = []
                for i, blob in enumerate(blobs):
                    names.append(f"blobs/{key}-{i}.{_ext(blob)}")
                    zf.writestr(names[-1], blob, compress_type=zipfile.ZIP_STORED)  # images are compressed
                entry = {k: header.get(k) for k in ("key", "created", "request", "nbytes", "latency_ms", "result")}
                lines.append(orjson.dumps({**entry, "key": key, "blobs": names}))
            manifest = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION,
                        "created": datetime.now(UTC).isoformat(timespec="seconds"), "count": len(lines),
                        "backend": {"name": str(backend.get("name", "")), "base_url": str(backend.get("base_url", ""))},
                        "record_version": RECORD_VERSION}
            zf.writestr("manifest.json", orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
            zf.writestr("entries.jsonl", b"\n".join(lines) + (b"\n" if lines else b""))
        return buf.getvalue()

    def import_bytes(self, data: bytes) -> ImportReport:
        """Merge an export into the recordings; nothing is written unless all of it reads.

        The zip is checked against the import caps (``MAX_IMPORT_BYTES`` uncompressed,
        ``MAX_IMPORT_ENTRIES`` recordings, ``MAX_IMPORT_MEMBERS`` members,
        ``MAX_COMPRESSION_RATIO`` per member beyond ``RATIO_FREE_BYTES``) from its
        directory before anything is expanded, then read as a stream in two passes:
        the first checks every entry and blob (CRCs included) keeping no blob, the
        second writes one recording at a time. Memory stays near one blob plus the
        entries' JSON, whatever the file claims.

        Imported recordings are stamped with the import time, so the cache TTL counts
        from now: a file's own dates (which anyone can edit, e.g. to year 2100) are kept
        only as information (``recorded`` in the record). Entries already recorded are
        kept as they are (counted as skipped).

        Raises:
            RecordError: not a zip, over an import cap, not a blossom-dash replay file,
                a newer format version, a count that does not match, or a damaged entry
                (the message says which).
        """
        if not isinstance(data, (bytes, bytearray)) or not data:
            raise RecordError("The file is empty.")
        zf = _open_export(bytes(data))
        with zf:
            manifest, rows = _check_export(zf)
            now = time.time()
            added = 0
            try:
                for header, names in rows:
                    if header["key"] in self._entries:
                        continue
                    blobs = [zf.read(name) for name in names]
                    self._write(header["key"], {**header, "created": now}, blobs)
                    added += 1
            except (zipfile.BadZipFile, OSError, EOFError) as exc:  # checked already; the disk, then
                raise RecordError(f"The import stopped after {added:,} recordings ({exc}).") from exc
        backend = manifest.get("backend") or {}
        return ImportReport(added, len(rows) - added, len(rows), str(backend.get("name", "?")),
                            str(manifest.get("created", "")))


def _check_export(zf: zipfile.ZipFile) -> tuple[dict[str, Any], list[tuple[dict[str, Any], list[str]]]]:
    """Check an export completely (first pass): the manifest, every entry, every blob's CRC.

    Returns:
        The manifest and, per entry, its record header and blob member names (the
        blobs themselves are read and dropped).

    Raises:
        RecordError: see ``RecordingStore.import_bytes``.
    """
    _check_caps(zf)
    try:
        names = set(zf.namelist())
        if "manifest.json" not in names or "entries.jsonl" not in names:
            raise RecordError("The zip has no manifest.json and entries.jsonl: it is not a blossom-dash "
                              "replay export.")
        if zf.getinfo("manifest.json").file_size > MAX_MANIFEST_BYTES:
            raise RecordError("The zip's manifest is not a blossom-dash replay manifest (far too large).")
        manifest = orjson.loads(zf.read("manifest.json"))
        if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT:
            raise RecordError("The zip's manifest is not a blossom-dash replay manifest.")
        version = manifest.get("version")
        if not isinstance(version, int) or version < 1:
            raise RecordError(f"The manifest's format version {version!r} is not valid.")
        if version > EXPORT_VERSION:
            raise RecordError(f"The file was made by a newer blossom-dash (format version {version}; this one "
                              f"reads up to {EXPORT_VERSION}).")
        rows = []
        with zf.open("entries.jsonl") as lines:
            for line in lines:
                if not line.strip():
                    continue
                if len(rows) >= MAX_IMPORT_ENTRIES:
                    raise RecordError(f"The file holds more than {MAX_IMPORT_ENTRIES:,} recordings, the import "
                                      "limit.")
                rows.append(_check_entry(zf, names, line, len(rows) + 1))
    except (zipfile.BadZipFile, OSError, EOFError) as exc:  # bad CRC, truncated member
        raise RecordError(f"The zip is damaged ({exc}).") from exc
    except orjson.JSONDecodeError as exc:
        raise RecordError("The manifest or an entry is not valid JSON (the file is damaged).") from exc
    if manifest.get("count") != len(rows):
        raise RecordError(f"The manifest says {manifest.get('count')!r} entries but the file holds {len(rows)} "
                          "(it is truncated or was edited).")
    return manifest, rows


def _check_entry(zf: zipfile.ZipFile, names: set[str], line: bytes, n: int) -> tuple[dict[str, Any], list[str]]:
    entry = orjson.loads(line)
    if not isinstance(entry, dict):
        raise RecordError(f"Entry {n} is not an object.")
    key, request = entry.get("key"), entry.get("request")
    if not isinstance(key, str) or not _KEY_RE.match(key) or not isinstance(request, dict):
        raise RecordError(f"Entry {n} has no valid key or request.")
    if canonical_key(request) != key:
        raise RecordError(f"Entry {n}'s key does not match its request (the file was edited or damaged).")
    blob_names = entry.get("blobs") or []
    if not isinstance(blob_names, list):
        raise RecordError(f"Entry {n} has a malformed field (blobs is not a list).")
    for name in blob_names:
        if not isinstance(name, str) or name not in names:
            raise RecordError(f"Entry {n} refers to {name!r}, which the zip does not hold.")
        _check_blob(zf, name)
    try:
        # Stand-ins: the check needs the blobs' count, not their bytes.
        _from_doc(entry.get("result"), [b""] * len(blob_names))
        header = {"format": RECORD_VERSION, "key": key, "created": 0.0, "request": request,
                  "recorded": float(entry.get("created") or 0.0),  # the file's date, information only
                  "nbytes": int(entry.get("nbytes") or 0), "latency_ms": float(entry.get("latency_ms") or 0.0),
                  "result": entry.get("result")}
    except RecordError as exc:
        raise RecordError(f"Entry {n} cannot be read: {exc}.") from exc
    except (TypeError, ValueError) as exc:
        raise RecordError(f"Entry {n} has a malformed field ({exc}).") from exc
    return header, list(blob_names)


__all__ = [
    "EXPORT_FORMAT", "EXPORT_VERSION", "MAX_COMPRESSION_RATIO", "MAX_IMPORT_BYTES", "MAX_IMPORT_ENTRIES",
    "MAX_IMPORT_MEMBERS", "MAX_MANIFEST_BYTES", "RATIO_FREE_BYTES", "ImportReport", "RecordError", "Recording",
    "RecordingStore", "canonical_key", "lookup_alias", "not_recorded", "replay_aliases",
]
