"""Data-change fingerprints (retrain.onDataChange) of real files, an object store, HTTP and SQLite:
unchanged data keeps its fingerprint, a change of any kind changes it, rows are counted when asked."""

from __future__ import annotations

import http.server
import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest
from kubetune_trainer.__main__ import main
from kubetune_trainer.contract.config import DataSource, SqlSource
from kubetune_trainer.contract.results import DataFingerprint
from kubetune_trainer.data.fingerprint import fingerprint
from kubetune_trainer.errors import ConfigError

from tests.trainer.conftest import make_config
from tests.trainer.test_data import s3_server  # noqa: F401  (the moto S3 server fixture)


def rows(n: int, tag: str = "q") -> str:
    return "".join(json.dumps({"prompt": f"{tag}{i}", "completion": f"a{i}"}) + "\n" for i in range(n))


def test_a_claim_folder_changes_with_a_new_file_a_longer_file_or_a_touched_one(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text(rows(3))
    src = DataSource(uri=str(tmp_path))
    first = fingerprint(src)
    assert first.method == "files" and first.items == 1 and first.rows is None
    assert first.digest.startswith("files-sha256:") and fingerprint(src) == first  # unchanged: equal
    (tmp_path / "b.jsonl").write_text(rows(2))
    second = fingerprint(src)
    assert second.items == 2 and second.digest != first.digest
    (tmp_path / "a.jsonl").write_text(rows(4))
    third = fingerprint(src)
    assert third.digest != second.digest
    st = os.stat(tmp_path / "a.jsonl")
    os.utime(tmp_path / "a.jsonl", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # rewritten in place
    assert fingerprint(src).digest != third.digest
    counted = fingerprint(src, count_rows=True)
    assert counted.rows == 6 and counted.digest == fingerprint(src).digest


def test_the_same_files_under_another_mount_path_have_the_same_fingerprint(tmp_path: Path) -> None:
    for d in ("x", "y"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "t.jsonl").write_text(rows(2))
        os.utime(tmp_path / d / "t.jsonl", ns=(0, 1_700_000_000_000_000_000))
    assert fingerprint(DataSource(uri=str(tmp_path / "x"))) == fingerprint(DataSource(uri=str(tmp_path / "y")))


def test_an_object_store_prefix_is_listed_not_read() -> None:
    fs = fsspec.filesystem("memory")
    fs.pipe("/kt-bucket/data/a.jsonl", rows(3).encode())
    src = DataSource(uri="memory://kt-bucket/data/")
    first = fingerprint(src)
    assert first.method == "objects" and first.items == 1 and first.digest.startswith("objects-sha256:")
    assert fingerprint(src) == first
    fs.pipe("/kt-bucket/data/b.jsonl", rows(1).encode())
    assert fingerprint(src).digest != first.digest
    assert fingerprint(src, count_rows=True).rows == 4
    fs.rm("/kt-bucket", recursive=True)


def test_s3_objects_are_told_apart_by_their_etag(s3_server: str) -> None:  # noqa: F811
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="data")
    s3.put_object(Bucket="data", Key="tickets/a.jsonl", Body=rows(3, "x").encode())
    src = DataSource(uri="s3://data/tickets/")
    first = fingerprint(src)
    assert first.method == "objects" and first.items == 1 and fingerprint(src) == first
    s3.put_object(Bucket="data", Key="tickets/a.jsonl", Body=rows(3, "y").encode())  # same size, new ETag
    second = fingerprint(src)
    assert second.digest != first.digest
    s3.put_object(Bucket="data", Key="tickets/b.jsonl", Body=rows(2).encode())
    assert fingerprint(src).items == 2 and fingerprint(src, count_rows=True).rows == 5


class _Handler(http.server.BaseHTTPRequestHandler):
    etag: str | None = '"v1"'
    body = rows(2).encode()
    methods: list[str] = []

    def _head(self) -> None:
        self.methods.append(self.command)
        self.send_response(200)
        if self.etag:
            self.send_header("ETag", self.etag)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()

    def do_HEAD(self) -> None:
        self._head()

    def do_GET(self) -> None:
        self._head()
        self.wfile.write(self.body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/train.jsonl"
    httpd.shutdown()
    httpd.server_close()


def test_http_uses_a_head_request_and_the_etag_else_the_body(server: str) -> None:
    src = DataSource(uri=server)
    _Handler.methods.clear()
    first = fingerprint(src)
    assert first.method == "http" and _Handler.methods == ["HEAD"]  # one HEAD, no download
    _Handler.etag = '"v2"'
    assert fingerprint(src).digest != first.digest
    _Handler.etag = None  # no ETag, no Last-Modified: the body decides
    _Handler.methods.clear()
    no_tag = fingerprint(src)
    assert _Handler.methods == ["HEAD", "GET"] and fingerprint(src) == no_tag
    _Handler.body = rows(3).encode()
    assert fingerprint(src).digest != no_tag.digest
    _Handler.etag, _Handler.body = '"v1"', rows(2).encode()


def test_sql_counts_rows_and_runs_the_checksum_query(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "t.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE qa (prompt TEXT, completion TEXT, updated INTEGER)")
        conn.executemany("INSERT INTO qa VALUES (?, ?, ?)", [(f"q{i}", f"a{i}", 1) for i in range(5)])
    monkeypatch.setenv("TRAIN_DB", f"sqlite:///{db}")
    plain = DataSource(sql=SqlSource(query="SELECT prompt, completion FROM qa;", url_env="TRAIN_DB"))
    checked = DataSource(sql=SqlSource(query="SELECT prompt, completion FROM qa", url_env="TRAIN_DB",
                                       checksum_query="SELECT MAX(updated) FROM qa"))
    first, first_checked = fingerprint(plain), fingerprint(checked)
    assert first.method == "sql" and first.rows == 5 and first_checked.rows == 5
    with sqlite3.connect(db) as conn:  # an edit in place: same count, a newer `updated`
        conn.execute("UPDATE qa SET completion = 'new', updated = 2 WHERE prompt = 'q1'")
    assert fingerprint(plain) == first  # the count alone cannot see it
    assert fingerprint(checked).digest != first_checked.digest  # the checksum query can
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO qa VALUES ('q9', 'a9', 2)")
    assert fingerprint(plain).rows == 6 and fingerprint(plain).digest != first.digest


def test_sql_errors_name_the_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAIN_DB", f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(ConfigError, match=r"data-change check failed.*no such table"):
        fingerprint(DataSource(sql=SqlSource(query="SELECT * FROM missing", url_env="TRAIN_DB")))
    monkeypatch.delenv("TRAIN_DB")
    with pytest.raises(ConfigError, match="TRAIN_DB is empty"):
        fingerprint(DataSource(sql=SqlSource(query="SELECT 1", url_env="TRAIN_DB")))


def test_check_data_command_writes_the_fingerprint_as_termination_message(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "t.jsonl").write_text(rows(7))
    config = make_config(tmp_path, tmp_path / "no-model", tmp_path / "d")
    (tmp_path / "c.json").write_text(json.dumps(config))
    log = tmp_path / "termination-log"
    monkeypatch.setenv("KUBETUNE_TERMINATION_LOG", str(log))
    assert main(["check-data", "--config", str(tmp_path / "c.json"), "--count-rows", "--termination-message"]) == 0
    fp = DataFingerprint.model_validate_json(log.read_text())
    assert fp.rows == 7 and fp == fingerprint(DataSource(uri=str(tmp_path / "d")), count_rows=True)
    config["data"]["train"] = {"uri": str(tmp_path / "missing")}
    (tmp_path / "c.json").write_text(json.dumps(config))
    assert main(["check-data", "--config", str(tmp_path / "c.json"), "--termination-message"]) == 43
    assert "no such file" in log.read_text()
