"""Columnar reading of delimited text files, with errors that name the file and the line.

pyarrow parses a file in parallel into typed columns, so millions of ratings never become
Python objects: ids arrive dictionary-encoded (one small table of distinct texts plus an
integer code per row) and numbers as numpy buffers. In parallel mode pyarrow does not know
the line of a bad value, so when a read or a vectorised check fails the caller re-reads the
file line by line with `data_lines` (the slow path, taken only on error) to name the first
bad line exactly.

Why pyarrow rather than polars: both parse in parallel, but pyarrow's reader accepts any
Python file object (so '::'-separated files are rewritten to a one-byte separator while
streaming, never copied whole), encodes id columns as dictionaries of raw bytes (any id
text, any encoding) and hands numeric columns to numpy without copying. It is also the
most widely deployed columnar engine (pandas, Spark and polars interoperate through it),
so it rarely conflicts with the rest of an environment.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from contract.ids import MAX_ID_LENGTH, control_character

# The separator '::' files are rewritten to: ASCII "unit separator", made for this purpose.
_UNIT_SEPARATOR = "\x1f"
_CHUNK_BYTES = 1 << 22
# The number syntax pyarrow's float parser accepts (surrounding spaces allowed); the slow
# path uses it so that both paths agree on what is a number.
NUMBER = re.compile(r"\s*[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|inf(?:inity)?|nan)\s*", re.I)

UTF8_BOM = b"\xef\xbb\xbf"
GZIP_MAGIC = b"\x1f\x8b"

IDS = pa.dictionary(pa.int32(), pa.binary())
FLOAT = pa.float64()
TEXT = pa.string()


class DataError(ValueError):
    """A data file is missing, truncated or malformed; the message names file and line."""


class MalformedError(Exception):
    """The fast path met something it cannot read; the slow path names the line."""


@dataclass(frozen=True)
class Layout:
    """How one delimited file is laid out."""

    delimiter: str
    n_fields: int
    encoding: str = "latin-1"
    quoted: bool = False
    header_line: int = 0  # physical line number of the header; 0 when there is none


def require(path: Path) -> Path:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    return path


def encoding_of(path: Path, default: str) -> str:
    """`default`, or UTF-8 for a file that starts with a UTF-8 byte-order mark (an editor
    saved it so). Read as Latin-1, the mark became three characters of the first id."""
    with require(path).open("rb") as handle:
        return "utf-8" if handle.read(len(UTF8_BOM)) == UTF8_BOM else default


def decode_line(path: Path, number: int, raw: bytes, encoding: str) -> str:
    """One physical line as text, without its line break (and the first without a
    byte-order mark); a decoding error names the line."""
    if number == 1:
        raw = raw.removeprefix(UTF8_BOM)
    try:
        return raw.decode(encoding).rstrip("\r\n")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}:{number}: cannot decode as {encoding}: {err}") from None


def first_line(path: Path, encoding: str) -> tuple[int, str] | None:
    """The first non-blank line and its number, or None for a file without one."""
    with require(path).open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            line = decode_line(path, number, raw, encoding)
            if line.strip():
                return number, line
    return None


def csv_header(path: Path) -> tuple[int, list[str]]:
    """The header row of a quoted UTF-8 CSV file (a byte-order mark is ignored)."""
    with require(path).open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        try:
            for row in reader:
                if row and any(cell.strip() for cell in row):
                    return reader.line_num, [cell.strip() for cell in row]
        except UnicodeDecodeError:
            raise _not_utf8(path) from None
        except csv.Error as err:
            raise DataError(f"{path}:{reader.line_num}: {err}") from None
    raise DataError(f"{path}: empty file (expected a header line, then one row per line)")


class _Rewritten(io.RawIOBase):
    """A binary file as pyarrow reads it: a multi-byte separator rewritten to one byte and,
    when asked, the text re-encoded as UTF-8; chunk by chunk, never whole."""

    def __init__(self, path: Path, layout: Layout, *, transcode: bool) -> None:
        super().__init__()
        self._path = path
        self._handle = path.open("rb")
        self._separator = layout.delimiter.encode(layout.encoding)
        self._encoding = layout.encoding if transcode else None
        self._carry = b""
        self._out = b""
        self._offset = 0

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._handle.close()
        super().close()

    def _fill(self) -> bool:
        chunk = self._handle.read(_CHUNK_BYTES)
        if len(self._separator) > 1 and _UNIT_SEPARATOR.encode() in chunk:
            raise DataError(f"{self._path}: contains the control byte 0x1f (not a text file?)")
        data = self._carry + chunk
        self._carry = b""
        if len(self._separator) > 1:
            data = data.replace(self._separator, _UNIT_SEPARATOR.encode())
            # A separator split across two chunks is completed by the next one.
            keep = len(self._separator) - 1 if chunk else 0
            while keep and not data.endswith(self._separator[:keep]):
                keep -= 1
            if keep:
                data, self._carry = data[:-keep], data[-keep:]
        if self._encoding is not None:
            data = data.decode(self._encoding).encode("utf-8")
        self._out, self._offset = data, 0
        return bool(chunk) or bool(data)

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        # Fills the whole buffer unless the file ends: pyarrow sizes its blocks by reads.
        done = 0
        while done < len(buffer):
            if self._offset >= len(self._out) and not self._fill():
                break
            size = min(len(buffer) - done, len(self._out) - self._offset)
            buffer[done : done + size] = self._out[self._offset : self._offset + size]
            self._offset += size
            done += size
        return done


def read_columns(path: Path, layout: Layout, types: dict[int, pa.DataType]) -> pa.Table:
    """The fields at the given positions (named f0, f1, ...) with the given types.

    Raises MalformedError when pyarrow cannot read the file as laid out (a line with another
    number of fields, a value of the wrong type, text that is not UTF-8).
    """
    require(path)
    # Text columns must be UTF-8 for pyarrow; ids stay raw bytes and are decoded per
    # distinct value, so only files with text columns are re-encoded while read.
    transcode = layout.encoding.lower() not in ("utf-8", "utf8") and TEXT in types.values()
    if len(layout.delimiter) == 1 and not transcode:
        return _read(str(path), layout.delimiter, layout, types)
    if layout.delimiter == "::" and not transcode:
        try:
            return _read_doubled(path, layout, types)
        except MalformedError:
            pass  # a ':' inside a field: read again with the separator rewritten
    one_byte = len(layout.delimiter) == 1  # then the stream only re-encodes
    with _Rewritten(path, layout, transcode=transcode) as stream:
        return _read(stream, layout.delimiter if one_byte else _UNIT_SEPARATOR, layout, types)


def _read_doubled(path: Path, layout: Layout, types: dict[int, pa.DataType]) -> pa.Table:
    """A '::' file read straight from disk (in parallel, no rewriting) as ':'-separated:
    field j is column 2j, and every column between two fields must be empty (type null)."""
    single = Layout(
        delimiter=":",
        n_fields=2 * layout.n_fields - 1,
        encoding=layout.encoding,
        header_line=layout.header_line,
    )
    gaps = dict.fromkeys(range(1, single.n_fields, 2), pa.null())
    table = _read(str(path), ":", single, {2 * j: kind for j, kind in types.items()} | gaps)
    return pa.table({f"f{j}": table.column(f"f{2 * j}") for j in sorted(types)})


def _read(
    source: str | io.RawIOBase, delimiter: str, layout: Layout, types: dict[int, pa.DataType]
) -> pa.Table:
    names = [f"f{j}" for j in range(layout.n_fields)]
    try:
        return pacsv.read_csv(
            source,
            read_options=pacsv.ReadOptions(column_names=names, skip_rows=layout.header_line),
            parse_options=pacsv.ParseOptions(
                delimiter=delimiter,
                quote_char='"' if layout.quoted else False,
                newlines_in_values=layout.quoted,
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={names[j]: kind for j, kind in types.items()},
                include_columns=[names[j] for j in sorted(types)],
                null_values=[""],
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, UnicodeDecodeError) as err:
        raise MalformedError(" ".join(str(err).split())) from None


def id_codes(column: pa.ChunkedArray, encoding: str) -> tuple[np.ndarray, np.ndarray]:
    """(code per row, distinct ids) of a dictionary-encoded id column.

    Ids are decoded and stripped per distinct value, so the per-row work stays in numpy;
    the distinct ids come back sorted (numpy str array) and codes index into them.
    """
    if column.num_chunks == 0 or len(column) == 0:
        return np.zeros(0, np.int32), np.zeros(0, str)
    column = column.unify_dictionaries()
    try:
        texts = [raw.decode(encoding).strip() for raw in column.chunk(0).dictionary.to_pylist()]
    except UnicodeDecodeError as err:
        raise MalformedError(str(err)) from None
    # Checked before numpy, whose strings drop a trailing NUL ("7\x00" would become "7");
    # one search over the distinct ids joined, and the slow path names the line.
    if control_character("".join(texts)) is not None:
        raise MalformedError("a control character in an id")
    if texts and max(map(len, texts)) > MAX_ID_LENGTH:
        raise MalformedError(f"an id longer than {MAX_ID_LENGTH} characters")
    values, merged = np.unique(np.array(texts, dtype=str), return_inverse=True)
    codes = np.concatenate(
        [chunk.indices.to_numpy(zero_copy_only=False) for chunk in column.iterchunks()]
    )
    return merged.astype(np.int32)[codes], values


def unique_sorted(values: np.ndarray) -> np.ndarray:
    """np.unique by sorting: numpy 2's default hash-based unique is several times slower on
    ids (0.7 s against 0.01-0.2 s for a million keys)."""
    ordered = np.sort(values, kind="stable")
    if ordered.size == 0:
        return ordered
    keep = np.empty(ordered.size, bool)
    keep[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]


def floats(column: pa.ChunkedArray) -> np.ndarray:
    """A float64 column as numpy; empty cells become NaN."""
    return np.asarray(column.to_numpy(), dtype=np.float64)


def data_lines(path: Path, layout: Layout) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of every non-empty line after the header: the slow path.

    Empty lines are skipped, as pyarrow skips them; a line of spaces is a line with one
    field, as pyarrow reads it.
    """
    require(path)
    if layout.quoted:
        yield from _csv_lines(path, layout)
        return
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            line = decode_line(path, number, raw, layout.encoding)
            if number > layout.header_line and line:
                yield number, line.split(layout.delimiter)


def _csv_lines(path: Path, layout: Layout) -> Iterator[tuple[int, list[str]]]:
    with path.open(encoding="utf-8-sig", newline="", errors="strict") as handle:
        reader = csv.reader(handle, delimiter=layout.delimiter)
        try:
            for row in reader:
                if row and reader.line_num > layout.header_line:
                    yield reader.line_num, row
        except UnicodeDecodeError:
            raise _not_utf8(path) from None
        except csv.Error as err:
            raise DataError(f"{path}:{reader.line_num}: {err}") from None


def _not_utf8(path: Path) -> DataError:
    """The first line of `path` that is not UTF-8, named. The csv reader's line count
    cannot say it: the text is decoded ahead of the rows, a chunk at a time."""
    with path.open("rb") as handle:
        if handle.read(len(GZIP_MAGIC)) == GZIP_MAGIC:
            return DataError(f"{path}: gzip-compressed; decompress it first (gunzip)")
        handle.seek(0)
        try:
            for number, raw in enumerate(handle, start=1):
                decode_line(path, number, raw, "utf-8")
        except DataError as err:
            return err
    return DataError(f"{path}: cannot decode as utf-8")
