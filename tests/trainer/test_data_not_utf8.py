"""Bytes that are not UTF-8 make their own row invalid, with file:line, on every read path; the data gate
decides, and a failed gate exits 43 (never exit 1 from a UnicodeDecodeError) (issue 12, item 7)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from kubetune_trainer.contract.config import EXIT_CONFIG_ERROR, EXIT_OK, DataSource, SqlSource
from kubetune_trainer.data.sources import load_source

from tests.trainer.conftest import child_env, make_config, run_cli, write_config

GOOD = [{"prompt": f"Question number {i}?", "completion": f"Answer {i}."} for i in range(20)]
LATIN1 = "Caf\u00e9 au lait?".encode("latin-1")  # 0xE9: valid latin-1, not UTF-8


def _jsonl_with_latin1(path: Path, good: int = 20) -> Path:
    lines = [json.dumps(r).encode() for r in GOOD[:good]]
    lines.insert(1, b'{"prompt": "' + LATIN1 + b'", "completion": "yes"}')
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "text", "jsonl.gz"])
def test_a_line_with_a_latin1_byte_is_an_invalid_row_naming_file_and_line(tmp_path: Path, fmt: str) -> None:
    import gzip

    if fmt.startswith("jsonl"):
        data = _jsonl_with_latin1(tmp_path / "raw").read_bytes()
    elif fmt == "csv":
        data = b"prompt,completion\nfirst,one\n" + LATIN1 + b",two\nthird,three\n"
    else:
        data = b"first line\n" + LATIN1 + b"\nthird line\n"
    path = tmp_path / f"d.{fmt}"
    path.write_bytes(gzip.compress(data) if fmt.endswith(".gz") else data)
    loaded = load_source(DataSource(uri=str(path), format="text" if fmt == "text" else None))
    [error] = loaded.parse_errors
    line = 3 if fmt == "csv" else 2  # the CSV header is line 1
    assert error.where == f"{path}:{line}" and "not UTF-8" in error.message and "0xE9" in error.message
    assert len(loaded.rows) == (20 if fmt.startswith("jsonl") else 2)


def test_binary_parquet_and_sql_cells_that_are_not_utf8_are_invalid_rows(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"prompt": pa.array([b"fine", LATIN1], pa.binary()),
                             "completion": ["a", "b"]}), path)
    loaded = load_source(DataSource(uri=str(path)))
    assert loaded.rows == [{"prompt": "fine", "completion": "a"}]
    assert [e.where for e in loaded.parse_errors] == [f"{path}:row 2"] and "'prompt'" in loaded.parse_errors[0].message

    db = tmp_path / "rows.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (prompt BLOB, completion TEXT)")
        conn.executemany("INSERT INTO t VALUES (?, ?)", [(b"fine", "a"), (LATIN1, "b")])
    import os

    os.environ["KUBETUNE_TEST_SQL_URL"] = f"sqlite:///{db}"
    try:
        sql = load_source(DataSource(sql=SqlSource(query="SELECT prompt, completion FROM t ORDER BY rowid",
                                                   url_env="KUBETUNE_TEST_SQL_URL")))
    finally:
        del os.environ["KUBETUNE_TEST_SQL_URL"]
    assert sql.rows == [{"prompt": "fine", "completion": "a"}]
    assert [e.where for e in sql.parse_errors] == ["sql row 2"]


@pytest.mark.parametrize(("quality", "exit_code"), [({"minRows": 5, "maxInvalidFraction": 0.1}, EXIT_OK),
                                                    ({"minRows": 5, "maxInvalidFraction": 0.0}, EXIT_CONFIG_ERROR)],
                         ids=["gate-tolerates-it", "gate-fails-exit-43"])
def test_the_gate_decides_about_undecodable_rows(tmp_path: Path, tiny_lm: Path, quality: dict, exit_code: int) -> None:
    train = _jsonl_with_latin1(tmp_path / "t.jsonl")
    cfg = make_config(tmp_path, tiny_lm, train, data={"train": {"uri": str(train)}, "quality": quality})
    termination = tmp_path / "termination-log"
    proc = run_cli("validate-data", "--config", str(write_config(tmp_path / "c.json", cfg)),
                   "--termination-message", env=child_env(KUBETUNE_TERMINATION_LOG=str(termination)))
    assert proc.returncode == exit_code, proc.stderr[-2000:]
    assert "UnicodeDecodeError" not in proc.stderr and "Traceback" not in proc.stderr
    report = json.loads(termination.read_text())
    assert report["invalid"] == 1 and report["rows"] == 21
    assert any(f"{train}:2: not UTF-8" in e for e in report["errors"]) or f"{train}:2" in json.dumps(report)
