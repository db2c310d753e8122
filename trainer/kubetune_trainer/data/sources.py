"""Reading one split's rows from where the operator says they are.

- Local paths (a mounted PVC or ConfigMap): a file, a directory (every data file in it, sorted),
  or a glob.
- `s3://`, `gs://`, `https://`, … through fsspec. Credentials come from the environment the
  operator fills from a Secret: s3fs reads AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
  AWS_ENDPOINT_URL; https sends `Authorization: Bearer $KUBETUNE_HTTP_BEARER_TOKEN` when set.
- SQL: `sql.query` run against the SQLAlchemy URL held by the env var `sql.urlEnv`.

Every row keeps the 1-based line (jsonl, text, csv) or row number (parquet, sql) it came from, so
schema errors can name it. Rows that do not even parse are returned as `ParseError`s, not raised:
the quality report counts them and the gate decides (exit 43 when it fails), whatever the source.
That includes bytes that are not UTF-8: text is decoded with `surrogateescape`, so one bad byte
makes its own line (or CSV record, or parquet/SQL cell) invalid with `file:line`, instead of a
UnicodeDecodeError that ends the pod with exit 1 and makes the operator retry a data error.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from kubetune_trainer.contract.config import DataFormat, DataSource
from kubetune_trainer.errors import ConfigError

SUFFIX_FORMATS = {
    ".jsonl": DataFormat.JSONL,
    ".json": DataFormat.JSONL,
    ".ndjson": DataFormat.JSONL,
    ".csv": DataFormat.CSV,
    ".parquet": DataFormat.PARQUET,
    ".pq": DataFormat.PARQUET,
    ".txt": DataFormat.TEXT,
    ".text": DataFormat.TEXT,
    ".md": DataFormat.TEXT,
}


@dataclass(frozen=True)
class ParseError:
    where: str  # "file.jsonl:7"
    message: str


@dataclass
class LoadedRows:
    """The rows of one split, where each came from, and what could not be parsed."""

    source: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    origins: list[str] = field(default_factory=list)  # "file.jsonl:7", parallel to rows
    parse_errors: list[ParseError] = field(default_factory=list)

    def extend(self, other: LoadedRows) -> None:
        self.rows += other.rows
        self.origins += other.origins
        self.parse_errors += other.parse_errors

    def digest(self) -> str:
        """sha256 over the rows in canonical JSON: the same data gives the same digest from any source."""
        h = hashlib.sha256()
        for row in self.rows:
            h.update(json.dumps(row, sort_keys=True, ensure_ascii=False, default=str).encode())
            h.update(b"\n")
        return h.hexdigest()


def is_remote(uri: str) -> bool:
    scheme = urlparse(uri).scheme
    return len(scheme) > 1 and scheme != "file"


def guess_format(name: str, declared: DataFormat | str | None) -> DataFormat:
    if declared:
        return DataFormat(declared)
    path = urlparse(name).path if is_remote(name) else name
    suffix = Path(path.removesuffix(".gz")).suffix.lower()
    if suffix not in SUFFIX_FORMATS:
        raise ConfigError(
            f"data source {name!r}: cannot tell the format from suffix {suffix!r}; "
            f"set data.<split>.format to one of {[f.value for f in DataFormat]}"
        )
    return SUFFIX_FORMATS[suffix]


def _read_bytes(uri: str) -> bytes:
    """Whole file contents from a local path or an fsspec URI."""
    if not is_remote(uri):
        return Path(uri.removeprefix("file://")).read_bytes()
    scheme = urlparse(uri).scheme
    if scheme in ("http", "https"):
        return read_http(uri)
    import fsspec

    try:
        with fsspec.open(uri, "rb") as f:
            return f.read()  # type: ignore[no-any-return]
    except ImportError as e:
        raise ConfigError(f"data source {uri!r}: no fsspec filesystem for {scheme}:// ({e})") from e
    except FileNotFoundError as e:
        raise ConfigError(f"data source {uri!r}: no such object (check the bucket and key)") from e
    except PermissionError as e:
        raise ConfigError(f"data source {uri!r}: access denied; check the credentials in the pod's env "
                          "(spec.pod.envFrom)") from e


def read_http(uri: str) -> bytes:
    # urllib rather than fsspec's http filesystem: it needs no aiohttp, and one GET is all we do.
    import urllib.error
    import urllib.request

    headers = {"User-Agent": "kubetune-trainer"}
    token = os.environ.get("KUBETUNE_HTTP_BEARER_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(uri, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.read()  # type: ignore[no-any-return]
    except urllib.error.HTTPError as e:
        raise ConfigError(f"data source {uri!r}: HTTP {e.code} {e.reason}") from e
    except urllib.error.URLError as e:
        raise ConfigError(f"data source {uri!r}: cannot reach it ({e.reason})") from e


def expand(uri: str) -> list[str]:
    """A local directory or glob becomes its data files, sorted; anything else stays itself."""
    if is_remote(uri):
        if any(ch in uri for ch in "*?[") or (uri.endswith("/") and urlparse(uri).scheme not in ("http", "https")):
            import fsspec

            fs, _, paths = fsspec.get_fs_token_paths(uri)
            protocol = fs.protocol[0] if isinstance(fs.protocol, tuple) else fs.protocol
            if uri.endswith("/"):  # a prefix: every data file under it, like a local directory
                paths = [p for p in fs.find(paths[0]) if Path(p).suffix.lower() in SUFFIX_FORMATS]
            if not paths:
                raise ConfigError(f"data source {uri!r}: matches no {sorted(SUFFIX_FORMATS)} object")
            return [f"{protocol}://{p}" for p in sorted(paths)]
        return [uri]
    path = Path(uri.removeprefix("file://"))
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIX_FORMATS)
        if not files:
            raise ConfigError(f"data source {uri!r}: the directory holds no {sorted(SUFFIX_FORMATS)} files")
        return [str(p) for p in files]
    if any(ch in uri for ch in "*?["):
        files = sorted(Path("/").glob(str(path).lstrip("/"))) if path.is_absolute() else sorted(Path().glob(uri))
        if not files:
            raise ConfigError(f"data source {uri!r}: the pattern matches no file")
        return [str(p) for p in files]
    if not path.exists():
        raise ConfigError(f"data source {uri!r}: no such file (is the volume mounted?)")
    return [str(path)]


_UNDECODABLE = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of a byte that is not UTF-8


def _decode(data: bytes, name: str) -> str:
    """Text of a file; bytes that are not UTF-8 survive as lone surrogates for `_not_utf8` to report."""
    if name.endswith(".gz"):
        import gzip
        import zlib

        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise ConfigError(f"data source {name!r}: not a readable gzip file ({e})") from e
    return data.decode("utf-8-sig", errors="surrogateescape")


def _not_utf8(text: str) -> str | None:
    """Why `text` (decoded with surrogateescape) is not UTF-8, naming the first bad byte; None when it is."""
    m = _UNDECODABLE.search(text)
    if m is None:
        return None
    byte = ord(m.group()) - 0xDC00
    return (f"not UTF-8 text (byte 0x{byte:02X} at character {m.start() + 1}); "
            "re-save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)")


def _bad_text(values: Any) -> str | None:
    for value in values:
        if isinstance(value, str) and (why := _not_utf8(value)):
            return why
    return None


def _parse_jsonl(text: str, name: str, out: LoadedRows) -> None:
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{name}:{lineno}"
        if why := _not_utf8(line):
            out.parse_errors.append(ParseError(where, why))
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            out.parse_errors.append(ParseError(where, f"invalid JSON ({e.msg} at column {e.colno})"))
            continue
        except RecursionError:
            out.parse_errors.append(ParseError(where, "invalid JSON (nested too deeply)"))
            continue
        if not isinstance(row, dict):
            out.parse_errors.append(ParseError(where, f"expected a JSON object, got {type(row).__name__}"))
            continue
        out.rows.append(row)
        out.origins.append(where)


def _parse_csv(text: str, name: str, out: LoadedRows) -> None:
    first = text.split("\n", 1)[0]
    if why := _not_utf8(first):
        raise ConfigError(f"data source {name!r}: the CSV header (line 1) is {why}")
    reader = csv.DictReader(io.StringIO(text))
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:  # e.g. a NUL byte or an unterminated quote: the rest cannot be split into rows
            out.parse_errors.append(ParseError(f"{name}:{reader.line_num}", f"invalid CSV ({e}); rows after it "
                                               "were not read"))
            break
        where = f"{name}:{reader.line_num}"
        if None in row:  # more cells than header columns
            out.parse_errors.append(ParseError(where, f"{len(row) - 1 + len(row[None])} cells, header has {len(row) - 1}"))
            continue
        if why := _bad_text(row.values()):
            out.parse_errors.append(ParseError(where, why))
            continue
        out.rows.append({k: v for k, v in row.items()})
        out.origins.append(where)


def _parse_text(text: str, name: str, out: LoadedRows) -> None:
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if why := _not_utf8(line):
            out.parse_errors.append(ParseError(f"{name}:{lineno}", why))
            continue
        out.rows.append({"text": line})
        out.origins.append(f"{name}:{lineno}")


def _add_record(record: dict[str, Any], where: str, out: LoadedRows) -> None:
    """A parquet or SQL row: binary cells must hold UTF-8 text to be used as text."""
    row: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, bytes | bytearray | memoryview):
            try:
                value = bytes(value).decode("utf-8")
            except UnicodeDecodeError as e:
                out.parse_errors.append(ParseError(where, f"column {key!r} is not UTF-8 text (byte "
                                                          f"0x{bytes(value)[e.start]:02X} at byte {e.start + 1})"))
                return
        row[key] = value
    out.rows.append(row)
    out.origins.append(where)


def _parse_parquet(data: bytes, name: str, out: LoadedRows) -> None:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise ConfigError(f"data source {name!r}: not a readable parquet file ({e})") from e
    for i, row in enumerate(table.to_pylist(), start=1):
        _add_record(row, f"{name}:row {i}", out)


def load_file(uri: str, fmt: DataFormat) -> LoadedRows:
    out = LoadedRows(source=uri)
    data = _read_bytes(uri)
    name = uri
    if fmt == DataFormat.PARQUET:
        _parse_parquet(data, name, out)
        return out
    text = _decode(data, uri)
    {DataFormat.JSONL: _parse_jsonl, DataFormat.CSV: _parse_csv, DataFormat.TEXT: _parse_text}[fmt](text, name, out)
    return out


def load_sql(query: str, url_env: str) -> LoadedRows:
    url = os.environ.get(url_env)
    if not url:
        raise ConfigError(
            f"data source sql: environment variable {url_env} is empty; it must hold a SQLAlchemy URL "
            "(mount it from a Secret)"
        )
    import sqlalchemy

    out = LoadedRows(source=f"sql:{url_env}")
    try:
        engine = sqlalchemy.create_engine(url)
    except Exception as e:
        raise ConfigError(f"data source sql: {url_env} is not a usable SQLAlchemy URL ({e})") from e
    try:
        with engine.connect() as conn:
            result = conn.execute(sqlalchemy.text(query))
            for i, record in enumerate(result.mappings(), start=1):
                _add_record(dict(record), f"sql row {i}", out)
    except sqlalchemy.exc.SQLAlchemyError as e:
        raise ConfigError(f"data source sql: the query failed: {str(e).splitlines()[0]}") from e
    finally:
        engine.dispose()
    return out


def load_source(source: DataSource) -> LoadedRows:
    """All rows of one DataSource, in a stable order."""
    if source.sql is not None:
        return load_sql(source.sql.query, source.sql.url_env)
    assert source.uri is not None
    files = expand(source.uri)
    out = LoadedRows(source=source.uri)
    for uri in files:
        out.extend(load_file(uri, guess_format(uri, source.format)))
    return out
