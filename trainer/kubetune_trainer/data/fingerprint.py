"""A data source's fingerprint at bounded cost, for `retrain.onDataChange` (contract DataFingerprint).

The operator cannot mount volumes or hold data credentials, so for every source but a ConfigMap it
runs `kubetune-train check-data` in a small Job with the pod settings of the validation Job, and
compares the fingerprint it reports with the one the last run's validation reported.

Cost per check: one directory walk with a `stat` per file (a claim), one object listing (s3://,
gs://), one HEAD request (https://), or `SELECT COUNT(*)` over the query plus the user's checksum
query (SQL). Rows of files and objects are counted only when asked (`count_rows`, set by
`onDataChange.minNewRows`), which reads the data once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from kubetune_trainer.contract.config import DataSource
from kubetune_trainer.contract.results import DataFingerprint
from kubetune_trainer.data import sources
from kubetune_trainer.errors import ConfigError

# Object-store listings name their version differently (s3fs: ETag, gcsfs: md5Hash/generation, local: mtime).
_VERSION_KEYS = ("ETag", "etag", "md5Hash", "generation", "VersionId", "LastModified", "mtime", "updated",
                 "created")


def _digest(method: str, entries: list[Any]) -> str:
    text = json.dumps(entries, sort_keys=True, default=str, separators=(",", ":"))
    return f"{method}-sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _count_rows(source: DataSource) -> int:
    loaded = sources.load_source(source)
    return len(loaded.rows) + len(loaded.parse_errors)


def fingerprint(source: DataSource, count_rows: bool = False) -> DataFingerprint:
    """The fingerprint of `source` now. Raises ConfigError when the source cannot be reached or listed."""
    if source.sql is not None:
        return _sql(source)
    assert source.uri is not None
    scheme = urlparse(source.uri).scheme
    if scheme in ("http", "https"):
        fp = _http(source.uri)
    elif sources.is_remote(source.uri):
        fp = _objects(source.uri)
    else:
        fp = _files(source.uri)
    if count_rows:
        fp.rows = _count_rows(source)
    return fp


def _files(uri: str) -> DataFingerprint:
    files = sources.expand(uri)
    root = Path(uri.removeprefix("file://"))
    base = root if root.is_dir() else root.parent
    entries = []
    for name in files:
        st = os.stat(name)
        entries.append([os.path.relpath(name, base), st.st_size, st.st_mtime_ns])
    return DataFingerprint(digest=_digest("files", entries), method="files", items=len(entries))


def _objects(uri: str) -> DataFingerprint:
    import fsspec

    # fsspec keeps filesystems and their listings for the process: a second look must list again.
    fsspec.get_fs_token_paths(uri)[0].invalidate_cache()
    entries = []
    for name in sources.expand(uri):
        fs, _, (path,) = fsspec.get_fs_token_paths(name)
        try:
            info = fs.info(path)
        except FileNotFoundError as e:
            raise ConfigError(f"data source {uri!r}: no such object {name!r}") from e
        version = next((info[k] for k in _VERSION_KEYS if info.get(k) is not None), None)
        entries.append([name, info.get("size"), version])
    return DataFingerprint(digest=_digest("objects", entries), method="objects", items=len(entries))


def _http(uri: str) -> DataFingerprint:
    import urllib.error
    import urllib.request

    headers = {"User-Agent": "kubetune-trainer"}
    if token := os.environ.get("KUBETUNE_HTTP_BEARER_TOKEN"):
        headers["Authorization"] = f"Bearer {token}"
    try:
        with urllib.request.urlopen(urllib.request.Request(uri, headers=headers, method="HEAD"), timeout=60) as r:
            etag, modified, length = r.headers.get("ETag"), r.headers.get("Last-Modified"), r.headers.get("Content-Length")
    except urllib.error.HTTPError as e:
        raise ConfigError(f"data source {uri!r}: HTTP {e.code} {e.reason} to HEAD") from e
    except urllib.error.URLError as e:
        raise ConfigError(f"data source {uri!r}: cannot reach it ({e.reason})") from e
    if etag is None and modified is None:  # nothing says which version this is: the body does
        return DataFingerprint(digest=_digest("http", [hashlib.sha256(sources.read_http(uri)).hexdigest()]),
                               method="http", items=1)
    return DataFingerprint(digest=_digest("http", [etag, modified, length]), method="http", items=1)


def _sql(source: DataSource) -> DataFingerprint:
    sql = source.sql
    assert sql is not None
    url = os.environ.get(sql.url_env)
    if not url:
        raise ConfigError(f"data source sql: environment variable {sql.url_env} is empty; it must hold a "
                          "SQLAlchemy URL (mount it from a Secret)")
    import sqlalchemy

    # The query as a derived table: any SELECT works, and the database counts without sending rows.
    query = re.sub(r"[;\s]+$", "", sql.query)
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = int(conn.execute(sqlalchemy.text(f"SELECT COUNT(*) FROM ({query}) AS kubetune_rows")).scalar_one())
            checksum = None
            if sql.checksum_query:
                first = conn.execute(sqlalchemy.text(sql.checksum_query)).first()
                checksum = list(first) if first is not None else None
    except sqlalchemy.exc.SQLAlchemyError as e:
        raise ConfigError(f"data source sql: the data-change check failed: {str(e).splitlines()[0]}") from e
    finally:
        engine.dispose()
    return DataFingerprint(digest=_digest("sql", [rows, checksum]), method="sql", items=1, rows=rows)
