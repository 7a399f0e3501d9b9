"""Batch files: parsing and checking the uploaded CSV, the template, the downloads.

None of this imports streamlit or touches the database:

- **Parsing and validation** (``parse_csv``): pandas reads the file (``dtype=str``,
  ``keep_default_na=False``, so "NA" stays a prompt and "007" stays a seed); the rules
  for each row are this module's (``row_problems``), the same ones the service applies
  to one request, so a row that passes here is not refused later. ``check_rows``
  applies them again to the rows of a job being submitted. A ``template`` column (with
  one column per variable) fills rows from the prompt library (``batch_templates``).
- **The template** (``template_csv``): an example file to fill in.
- **Export** (``results_csv``, ``results_jsonl``): a job's results as downloads.

Limits: ``MAX_FILE_BYTES`` (5 MB), ``MAX_ROWS`` (10,000) and ``MAX_COLUMNS`` (1,000)
per file; any 5 MB file parses in well under 2 s (pandas' cost grows with the columns,
hence their cap, checked on the header before pandas reads the file).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
import re
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from decimal import Decimal
from typing import Any

import pandas as pd

from ..errors import InvalidRequest
from ..gateway.requests import TextRequest
from ..telemetry.analytics import neutralise_formulas
from ..telemetry.export import CSV_LINE_TERMINATOR, plain_decimal
from .batch_templates import Resolver, expand_templates

#: Largest CSV accepted, bytes (5 MB holds 10,000 prompts of ~500 characters).
MAX_FILE_BYTES = 5 * 1024 * 1024
#: Most rows in one batch.
MAX_ROWS = 10_000
#: Most columns in a batch file (six are used; the rest are ignored). pandas takes ~20 s
#: on a 5 MB header of 650,000 columns, so a wider file is refused before it is read.
MAX_COLUMNS = 1_000
#: The columns a batch file may have; only ``prompt`` is required.
COLUMNS: tuple[str, ...] = ("prompt", "model", "system", "temperature", "max_tokens", "seed")

RESAVE_HINT = ("Re-save it as UTF-8: in Excel, File › Save As › “CSV UTF-8 (Comma delimited)”; in LibreOffice, "
               "tick “Edit filter settings” and pick “Unicode (UTF-8)”; Google Sheets' File › Download › CSV "
               "is already UTF-8.")
FORMAT_HINT = ("The first row names the columns: “prompt” (required), and optionally “model”, “system”, "
               "“temperature”, “max_tokens”, “seed”. Then one prompt per row. Instead of “prompt”, a "
               "“template” column (name, name@label or name@3) and one column per variable.")
#: Either column gives a row its prompt (``batch_templates``).
_PROMPT_COLUMNS = frozenset({"prompt", "template"})


# ----- parsing and validation ----------------------------------------------------------


@dataclass(frozen=True)
class BatchRow:
    """One prompt of a batch, with its own parameters.

    Attributes:
        row: Its row number in the uploaded file, as a spreadsheet numbers it (the
            header is row 1, the first prompt row 2).
        prompt: The user message.
        model / system / temperature / max_tokens / seed: ``None`` = the service's default.
        errors: Why the row cannot run (empty when it can).
    """

    row: int
    prompt: str
    model: str | None = None
    system: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    errors: tuple[str, ...] = ()

    @property
    def valid(self) -> bool:
        """Whether the row can run."""
        return not self.errors

    def params(self) -> dict[str, Any]:
        """The fields of a ``gateway.TextRequest`` besides the prompt."""
        return {"model": self.model, "system": self.system, "temperature": self.temperature,
                "max_tokens": self.max_tokens, "seed": self.seed}


@dataclass(frozen=True)
class ParsedBatch:
    """A parsed batch file.

    Attributes:
        rows: Every non-blank row, valid or not, in file order.
        columns: The recognised columns the file has (``prompt`` first).
        notes: Things worth knowing that are not errors (ignored columns, skipped
            blank rows, a semicolon delimiter).
    """

    rows: tuple[BatchRow, ...]
    columns: tuple[str, ...]
    notes: tuple[str, ...] = ()

    @property
    def valid(self) -> list[BatchRow]:
        """The rows that can run."""
        return [r for r in self.rows if r.valid]

    @property
    def invalid(self) -> list[BatchRow]:
        """The rows that cannot run, each with its ``errors``."""
        return [r for r in self.rows if not r.valid]

    def frame(self) -> pd.DataFrame:
        """The preview: one row per ``BatchRow``, with a ``problem`` column ("" when valid)."""
        cols = ["row", *COLUMNS, "problem"]
        data = [[r.row, r.prompt, r.model or "", r.system or "", r.temperature, r.max_tokens, r.seed,
                 "; ".join(r.errors)] for r in self.rows]
        df = pd.DataFrame(data, columns=cols)
        return df.astype({"temperature": "Float64", "max_tokens": "Int64", "seed": "Int64"})


def _norm_column(name: object) -> str:
    return re.sub(r"[\s\-]+", "_", str(name).strip().lower())


def decode_csv(data: bytes) -> str:
    """The text of an uploaded CSV: UTF-8, with or without a byte-order mark.

    Args:
        data: The file's bytes.

    Returns:
        The decoded text (a UTF-8 BOM, as Excel's "CSV UTF-8" writes, removed).

    Raises:
        InvalidRequest: empty, an Excel workbook, UTF-16, or not UTF-8 (the message
            names the first bad byte and its line, the hint how to re-save the file).
    """
    if not data or not data.strip():
        raise InvalidRequest("The file is empty.", FORMAT_HINT)
    if data.startswith(b"PK\x03\x04"):
        raise InvalidRequest("This is an Excel workbook (.xlsx), not a CSV file.",
                             "In Excel, use File › Save As › “CSV UTF-8 (Comma delimited)” and upload that.")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise InvalidRequest("The file is UTF-16 (Excel's “Unicode Text”), not UTF-8.", RESAVE_HINT)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise InvalidRequest(
            f"The file is not UTF-8: byte 0x{data[exc.start]:02X} on line {line} is not valid UTF-8 "
            "(the file was probably saved as Windows-1252 / Latin-1, e.g. Excel's plain “CSV”).",
            RESAVE_HINT) from None


def _header_cells(text: str, sep: str) -> list[str]:
    """The cells of the first record of ``text`` (Python's C csv reader: fast on any width).

    Raises:
        InvalidRequest: the header cannot be read (a cell longer than the csv module's
            field limit, 128 KiB).
    """
    try:
        return next(csv.reader(io.StringIO(text), delimiter=sep), [])
    except csv.Error as exc:
        raise InvalidRequest(f"The header row is not readable: {exc}.", FORMAT_HINT) from None


def _read_frame(text: str, sep: str) -> pd.DataFrame:
    """pandas' reader with every cell as text and blank lines kept (row numbers stay true).

    pandas makes the first column the index, rather than raising, when the first row has
    one cell more than the header; ``parse_csv`` refuses that once the delimiter is settled.

    Raises:
        InvalidRequest: more than ``MAX_COLUMNS`` columns, no header, a later row with
            more cells than the header, or a file pandas cannot read.
    """
    header = _header_cells(text, sep)
    if len(header) > MAX_COLUMNS:
        raise InvalidRequest(f"The file has {len(header):,} columns; a batch file has at most {MAX_COLUMNS:,}.",
                             FORMAT_HINT)
    try:
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, sep=sep, skip_blank_lines=False)
    except pd.errors.EmptyDataError:
        raise InvalidRequest("The file has no header row.", FORMAT_HINT) from None
    except pd.errors.ParserError as exc:
        msg = str(exc)
        if m := re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", msg):
            expected, line, saw = m.groups()
            raise InvalidRequest(
                f"Row {line} has {saw} cells but the header has {expected}.",
                "A prompt that contains the delimiter (a comma) must be in double quotes, and a quote inside it "
                "doubled (\"\"); spreadsheet programs do this when they save as CSV.") from None
        raise InvalidRequest(f"The file is not a readable CSV: {msg.splitlines()[-1][:200]}",
                             "Open it in a spreadsheet program and save it again as CSV UTF-8.") from None
    if len(header) == len(df.columns):
        # The names as written: pandas renames a repeated "prompt" to "prompt.1", which
        # would hide the duplicate from the check in parse_csv.
        df.columns = header
    return df.fillna("")


def parse_csv(data: bytes, *, known_models: Collection[str] | None = None, max_prompt_chars: int = 5000,
              max_rows: int = MAX_ROWS, max_bytes: int = MAX_FILE_BYTES,
              templates: Resolver | None = None) -> ParsedBatch:
    """Parse and validate a batch file.

    Args:
        data: The uploaded bytes (UTF-8, optionally with a BOM).
        known_models: The backend's text models; a row naming another is invalid.
            ``None`` when the list is not known (then any name passes).
        max_prompt_chars: Longest prompt (system prompt included), as the service's
            ``Settings.max_prompt_chars``.
        max_rows / max_bytes: The file limits (``MAX_ROWS``, ``MAX_FILE_BYTES``).
        templates: Looks up a ``template`` cell for the uploader
            (``SessionHandle.prompt_resolver()``); such rows are filled in from the
            template and its variable columns (``batch_templates``). None: a template
            row is invalid and says why.

    Returns:
        ``ParsedBatch`` with every non-blank row; invalid rows carry their ``errors``.

    Raises:
        InvalidRequest: the file as a whole cannot be used (too large, empty, not
            UTF-8, no ``prompt`` column, no rows, too many rows, unreadable CSV).
    """
    if len(data) > max_bytes:
        raise InvalidRequest(f"The file is {len(data) / 1_048_576:.1f} MB; the limit is "
                             f"{max_bytes / 1_048_576:.0f} MB.", "Split it into smaller files.")
    text = decode_csv(data)
    header = text.split("\n", 1)[0]
    df = _read_frame(text, ",")
    notes: list[str] = []
    if not _PROMPT_COLUMNS & {_norm_column(c) for c in df.columns}:
        # Excel in many European locales saves "CSV" with semicolons; some tools use tabs.
        for sep, label in ((";", "semicolons"), ("\t", "tabs")):
            if sep in header and _PROMPT_COLUMNS & {_norm_column(c) for c in header.split(sep)}:
                df = _read_frame(text, sep)
                notes.append(f"The columns are separated by {label}; read that way.")
                break
    if not isinstance(df.index, pd.RangeIndex):  # see _read_frame: an unquoted comma in the first prompt
        raise InvalidRequest(
            f"Row 2 has {len(df.columns) + 1} cells but the header has {len(df.columns)}.",
            "A prompt that contains the delimiter (a comma) must be in double quotes, and a quote inside it "
            "doubled (\"\"); spreadsheet programs do this when they save as CSV.")
    names = [_norm_column(c) for c in df.columns]
    counts = Counter(names)  # linear: names.count() per column was quadratic in the width
    duplicated = sorted(n for n in (*COLUMNS, "template") if counts[n] > 1)
    if duplicated:
        raise InvalidRequest(f"The column “{duplicated[0]}” appears more than once.", "Keep one of them.")
    if not _PROMPT_COLUMNS & set(names):
        found = ", ".join(f"“{c}”" for c in df.columns[:8]) or "none"
        raise InvalidRequest(f"The file has no “prompt” column (its columns: {found}).", FORMAT_HINT)
    df.columns = names
    expanded = expand_templates(df, templates) if "template" in names else None
    if expanded is not None:
        df, templated = expanded.frame, expanded.variable_columns | {"template"}
        notes += expanded.notes
    ignored = [c for c in df.columns if c not in COLUMNS and (expanded is None or c not in templated)]
    if ignored:
        notes.append("Ignored columns: " + ", ".join(ignored[:10]) + (" …" if len(ignored) > 10 else "") + ".")
    used = [c for c in COLUMNS if c in df.columns]
    df = df[used + (["template"] if expanded is not None else [])]  # a template row is not blank
    blank = df.apply(lambda col: col.str.strip() == "").all(axis=1)
    if blank.any():
        notes.append(f"Skipped {int(blank.sum()):,} blank row(s).")
    df = df[~blank]
    if df.empty:
        raise InvalidRequest("The file has a header but no prompts.", FORMAT_HINT)
    if len(df) > max_rows:
        raise InvalidRequest(f"The file has {len(df):,} rows; a batch holds at most {max_rows:,}.",
                             f"Split it into files of up to {max_rows:,} rows and run them one after another.")
    known = frozenset(known_models) if known_models is not None else None
    rows = tuple(validate_row(int(pos) + 2, record, known_models=known, max_prompt_chars=max_prompt_chars,
                              template_errors=expanded.errors.get(pos) if expanded else None)
                 for pos, record in zip(df.index, df.to_dict("records"), strict=True))
    return ParsedBatch(rows, tuple(used), tuple(notes))


def _number(name: str, raw: str, errors: list[str], *, whole: bool) -> float | int | None:
    value = raw.strip()
    if not value:
        return None
    if re.fullmatch(r"[+-]?\d+,\d+", value):  # a decimal comma, as European spreadsheets write it
        value = value.replace(",", ".")
    try:
        number = float(value)
    except ValueError:
        errors.append(f"{name} “{raw.strip()[:20]}” is not a {'whole number' if whole else 'number'}")
        return None
    if not math.isfinite(number):
        errors.append(f"{name} “{raw.strip()[:20]}” is not a {'whole number' if whole else 'number'}")
        return None
    if whole:
        if not number.is_integer():
            errors.append(f"{name} {value} is not a whole number")
            return None
        return int(number)
    return number


def validate_row(row: int, values: Mapping[str, str], *, known_models: Collection[str] | None = None,
                 max_prompt_chars: int = 5000, template_errors: Sequence[str] | None = None) -> BatchRow:
    """One file row (cells as text) as a ``BatchRow``, with its problems.

    Args:
        row: The row's number in the file (header = 1).
        values: Cells by column name (``COLUMNS``); missing or blank = not given.
        known_models / max_prompt_chars: As in ``parse_csv``.
        template_errors: Why the row's template could not be used (``batch_templates``):
            listed first, in place of "the prompt is empty" that follows from them.

    Returns:
        ``BatchRow``; ``errors`` lists bad numbers and everything ``row_problems`` finds.
    """
    errors: list[str] = []
    temperature = _number("temperature", values.get("temperature", ""), errors, whole=False)
    max_tokens = _number("max_tokens", values.get("max_tokens", ""), errors, whole=True)
    seed = _number("seed", values.get("seed", ""), errors, whole=True)
    parsed = BatchRow(row=row, prompt=values.get("prompt", ""), model=values.get("model", "").strip() or None,
                      system=values.get("system", "").strip() or None, temperature=temperature,
                      max_tokens=None if max_tokens is None else int(max_tokens),
                      seed=None if seed is None else int(seed))
    errors += row_problems(parsed, known_models=known_models, max_prompt_chars=max_prompt_chars)
    if template_errors:
        errors = [*template_errors, *(e for e in errors if e != "The prompt is empty")]
    return replace(parsed, errors=tuple(errors))


def row_problems(row: BatchRow, *, known_models: Collection[str] | None = None,
                 max_prompt_chars: int = 5000) -> list[str]:
    """What stops ``row`` from running, one sentence each (empty list: it can run).

    The rules are the gateway's own (``gateway.TextRequest.problems``), so a row the
    preview accepts is a request the pipeline accepts; plus a model from
    ``known_models`` when that list is given.
    """
    request = TextRequest(row.prompt if isinstance(row.prompt, str) else "", row.model, row.system, None,
                          row.max_tokens, row.temperature, row.seed)
    problems = [err.message.rstrip(".") for err in request.problems(max_prompt_chars)]
    if (row.model is not None and known_models is not None and isinstance(row.model, str)
            and row.model not in known_models and not any("model" in p for p in problems)):
        problems.append(f"Unknown model “{row.model}”")
    return problems


def apply_defaults(rows: Sequence[BatchRow], *, model: str | None = None, max_tokens: int | None = None
                   ) -> list[BatchRow]:
    """``rows`` with ``model`` / ``max_tokens`` filled in where a row left them blank."""
    return [replace(r, model=r.model or model, max_tokens=r.max_tokens if r.max_tokens is not None else max_tokens)
            for r in rows]


def template_csv() -> bytes:
    """A small example batch file (UTF-8), to download and fill in."""
    df = pd.DataFrame([
        {"prompt": "Summarise the benefits of moving-window rate limits in two sentences.", "model": "",
         "system": "", "temperature": "", "max_tokens": "", "seed": ""},
        {"prompt": "Write a haiku about latency percentiles.", "model": "", "system": "You are a poet.",
         "temperature": "0.7", "max_tokens": "120", "seed": "42"},
    ], columns=list(COLUMNS))
    return df.to_csv(index=False).encode("utf-8")


def check_rows(rows: Sequence[BatchRow | Mapping[str, Any]], *, max_prompt_chars: int = 5000,
               max_rows: int = MAX_ROWS) -> list[BatchRow]:
    """The rows of a job to submit, checked again (a script may build them by hand).

    Args:
        rows: ``BatchRow`` objects (``parse_csv``'s valid rows) or mappings with a
            ``prompt`` and optional ``model``, ``system``, ``temperature``,
            ``max_tokens``, ``seed`` (typed values; ``row`` defaults to the position + 2).

    Returns:
        ``BatchRow`` objects, in order.

    Raises:
        InvalidRequest: no rows, more than ``max_rows``, or a row ``row_problems`` refuses.
    """
    if isinstance(rows, (str, bytes)) or not isinstance(rows, Sequence):
        raise InvalidRequest("A batch is a list of rows.", "Upload a CSV file on the Batch page.")
    if not rows:
        raise InvalidRequest("The batch has no rows to run.", "Upload a file with at least one valid prompt.")
    if len(rows) > max_rows:
        raise InvalidRequest(f"The batch has {len(rows):,} rows; the limit is {max_rows:,}.",
                             f"Split it into batches of up to {max_rows:,} rows.")
    known = {f.name for f in fields(BatchRow)} - {"errors"}
    out: list[BatchRow] = []
    bad: list[str] = []
    for pos, item in enumerate(rows):
        if isinstance(item, BatchRow):
            row = replace(item, errors=())
        elif isinstance(item, Mapping):
            row = BatchRow(**{"row": pos + 2, "prompt": "", **{k: v for k, v in item.items() if k in known}})
        else:
            raise InvalidRequest(f"Row {pos + 2} is not a row of the batch.", "Upload a CSV file on the Batch page.")
        problems = row_problems(row, max_prompt_chars=max_prompt_chars)
        if problems:
            bad.append(f"row {row.row}: {'; '.join(problems)}")
        out.append(row)
    if bad:
        raise InvalidRequest(f"{len(bad):,} of {len(rows):,} rows cannot run ({bad[0]}"
                             + (f", and {len(bad) - 1:,} more)." if len(bad) > 1 else ")."),
                             "Fix them in the file, or run only the valid rows.")
    return out


# ----- export --------------------------------------------------------------------------


def results_csv(df: pd.DataFrame) -> bytes:
    """Batch results as UTF-8 CSV (with a BOM, so that Excel reads it as UTF-8), formulas neutralised.

    Rows end in CRLF, so a cell holding a bare CR or LF (a model's answer) is quoted and
    reads back whole.
    """
    out = neutralise_formulas(_plain_costs(df))
    return out.to_csv(index=False, lineterminator=CSV_LINE_TERMINATOR).encode("utf-8-sig")


def _plain_costs(df: pd.DataFrame) -> pd.DataFrame:
    """``cost`` (pollen, ``Decimal``) as exact plain decimal strings (``0.000138``); None stays None."""
    if "cost" not in df:
        return df
    out = df.copy()
    out["cost"] = out["cost"].map(lambda v: plain_decimal(v) if isinstance(v, Decimal) else None)
    return out


def results_jsonl(df: pd.DataFrame) -> bytes:
    """Batch results as JSON Lines: one object per row, missing values ``null``.

    JSON is not opened as formulas, so the values are exported as stored.
    """
    df = _plain_costs(df)
    records = df.astype(object).where(df.notna(), None).to_dict("records")
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")

