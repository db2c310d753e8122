"""Data sources, field mapping, augmentation and preparation, on real files, HTTP and SQLite."""

from __future__ import annotations

import http.server
import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from kubetune_trainer.contract.config import AugmentationStep, DataSource, FieldMapping, SqlSource, Task
from kubetune_trainer.data.augmentation import augment, noise_words
from kubetune_trainer.data.preparation import IGNORE_INDEX, pack, split_validation, tokenize_instruction
from kubetune_trainer.data.records import Record, SchemaIssue, to_record
from kubetune_trainer.data.sources import load_source
from kubetune_trainer.errors import ConfigError

ROWS = [{"prompt": f"question {i}", "completion": f"answer {i}"} for i in range(6)]


def test_jsonl_csv_parquet_and_text_give_the_same_rows(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    pd.DataFrame(ROWS).to_csv(tmp_path / "d.csv", index=False)
    pd.DataFrame(ROWS).to_parquet(tmp_path / "d.parquet")
    for name in ("d.jsonl", "d.csv", "d.parquet"):
        loaded = load_source(DataSource(uri=str(tmp_path / name)))
        assert loaded.rows == ROWS, name
    digests = {load_source(DataSource(uri=str(tmp_path / n))).digest() for n in ("d.jsonl", "d.csv", "d.parquet")}
    assert len(digests) == 1
    (tmp_path / "t.txt").write_text("first line\n\nsecond line\n")
    text = load_source(DataSource(uri=str(tmp_path / "t.txt")))
    assert text.rows == [{"text": "first line"}, {"text": "second line"}]
    assert text.origins == [f"{tmp_path / 't.txt'}:1", f"{tmp_path / 't.txt'}:3"]


def test_a_directory_is_read_file_by_file_in_order(tmp_path: Path) -> None:
    (tmp_path / "b.jsonl").write_text(json.dumps(ROWS[1]) + "\n")
    (tmp_path / "a.jsonl").write_text(json.dumps(ROWS[0]) + "\n")
    assert load_source(DataSource(uri=str(tmp_path))).rows == ROWS[:2]


def test_unparseable_lines_are_reported_with_line_numbers(tmp_path: Path) -> None:
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps(ROWS[0]) + "\n{not json\n[1, 2]\n")
    loaded = load_source(DataSource(uri=str(f)))
    assert len(loaded.rows) == 1
    assert [e.where for e in loaded.parse_errors] == [f"{f}:2", f"{f}:3"]
    assert "invalid JSON" in loaded.parse_errors[0].message


def test_missing_file_and_unknown_suffix_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_source(DataSource(uri=str(tmp_path / "nope.jsonl")))
    (tmp_path / "d.xml").write_text("<x/>")
    with pytest.raises(ConfigError, match=r"set data\.<split>\.format"):
        load_source(DataSource(uri=str(tmp_path / "d.xml")))


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[tuple[str, list[dict]]]:
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    seen: list[dict] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):  # type: ignore[no-untyped-def]
            super().__init__(*a, directory=str(tmp_path), **kw)

        def do_GET(self) -> None:
            seen.append(dict(self.headers))
            super().do_GET()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()


def test_http_source_sends_the_bearer_token_from_env(http_server: tuple[str, list[dict]],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    base, seen = http_server
    monkeypatch.setenv("KUBETUNE_HTTP_BEARER_TOKEN", "s3cret")
    assert load_source(DataSource(uri=f"{base}/d.jsonl")).rows == ROWS
    assert seen[-1]["Authorization"] == "Bearer s3cret"
    with pytest.raises(ConfigError, match="HTTP 404"):
        load_source(DataSource(uri=f"{base}/missing.jsonl"))


@pytest.fixture
def s3_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A local S3-compatible server (moto's, over real HTTP), reached through the same env vars a pod gets."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(key, value)
    import s3fs

    # fsspec reuses a filesystem made with the same arguments; the endpoint comes from the env, so a
    # filesystem of an earlier test would still talk to that test's (stopped) server.
    s3fs.S3FileSystem.clear_instance_cache()
    yield endpoint
    s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


def test_s3_source_reads_files_and_prefixes_through_fsspec(s3_server: str) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="datasets")
    body = "".join(json.dumps(r) + "\n" for r in ROWS)
    s3.put_object(Bucket="datasets", Key="support/train.jsonl", Body=body.encode())
    s3.put_object(Bucket="datasets", Key="support/more/part-2.jsonl", Body=body.encode())
    assert load_source(DataSource(uri="s3://datasets/support/train.jsonl")).rows == ROWS
    assert load_source(DataSource(uri="s3://datasets/support/")).rows == ROWS + ROWS  # a prefix, like a folder
    with pytest.raises(ConfigError, match="no such object"):
        load_source(DataSource(uri="s3://datasets/support/missing.jsonl"))
    with pytest.raises(ConfigError, match="matches no"):
        load_source(DataSource(uri="s3://datasets/empty/"))


def test_sql_source_reads_a_real_sqlite_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "data.db"
    with sqlite3.connect(db) as conn:
        conn.execute("create table pairs (q text, a text, split text)")
        conn.executemany("insert into pairs values (?, ?, ?)", [(r["prompt"], r["completion"], "train") for r in ROWS])
    monkeypatch.setenv("TRAIN_DB", f"sqlite:///{db}")
    source = DataSource(sql=SqlSource(query="select q as prompt, a as completion from pairs where split = 'train'",
                                      url_env="TRAIN_DB"))
    assert load_source(source).rows == ROWS
    monkeypatch.delenv("TRAIN_DB")
    with pytest.raises(ConfigError, match="TRAIN_DB is empty"):
        load_source(source)
    monkeypatch.setenv("TRAIN_DB", f"sqlite:///{db}")
    with pytest.raises(ConfigError, match="the query failed"):
        load_source(DataSource(sql=SqlSource(query="select * from nope", url_env="TRAIN_DB")))


@pytest.mark.parametrize(
    ("row", "task", "expect"),
    [
        ({"prompt": "p", "completion": "c"}, Task.INSTRUCTION, [{"role": "user", "content": "p"},
                                                                {"role": "assistant", "content": "c"}]),
        ({"prompt": "p"}, Task.INSTRUCTION, "missing column 'completion'"),
        ({"text": "t"}, Task.TEXT, None),
        ({"body": "t"}, Task.TEXT, "missing column 'text'"),
        ({"text": "t", "label": "maybe"}, Task.CLASSIFICATION, "not one of the configured labels"),
        ({"text": 3.5, "label": "yes"}, Task.CLASSIFICATION, None),
        ({"text": ["a"], "label": "yes"}, Task.CLASSIFICATION, "must be a string"),
    ],
)
def test_field_mapping(row: dict, task: Task, expect: object) -> None:
    result = to_record(row, "f:1", task, FieldMapping(), ["yes", "no"])
    if isinstance(expect, str):
        assert isinstance(result, SchemaIssue) and expect in result.message and result.where == "f:1"
    else:
        assert isinstance(result, Record)
        if expect is not None:
            assert result.data["messages"] == expect


@pytest.mark.parametrize(
    ("row", "task", "fields", "expect"),
    [
        ({"question": "q", "answer": "a"}, Task.INSTRUCTION, FieldMapping(),
         "missing column 'prompt' (data.fields.prompt); instruction rows need columns 'prompt' and 'completion' "
         "(data.fields.prompt, data.fields.completion) or a chat column named in data.fields.messages; this row has "
         "columns ['answer', 'question']: set data.fields to the names your data uses"),
        ({"question": "q", "completion": "a"}, Task.INSTRUCTION, FieldMapping(messages="chat"),
         "missing column 'prompt' (data.fields.prompt); instruction rows need columns 'prompt' and 'completion' "
         "(data.fields.prompt, data.fields.completion) or a chat column 'chat' (data.fields.messages); this row has "
         "columns ['completion', 'question']"),
        ({"body": "b", "queue": "x"}, Task.CLASSIFICATION, FieldMapping(label="queue"),
         "missing column 'text' (data.fields.text); classification rows need a text column; this row has columns "
         "['body', 'queue']"),
        ({"text": "t"}, Task.CLASSIFICATION, FieldMapping(), "missing column 'label' (data.fields.label)"),
        ({f"c{i:02}": i for i in range(23)}, Task.TEXT, FieldMapping(), "'c19', … (3 more)]"),
    ],
    ids=["instruction", "instruction-with-chat-column", "classification-text", "classification-label", "wide-row"],
)
def test_a_missing_column_names_its_data_fields_setting_and_the_columns_found(
        row: dict, task: Task, fields: FieldMapping, expect: str) -> None:
    issue = to_record(row, "t.jsonl:3", task, fields, ["x", "y"])
    assert isinstance(issue, SchemaIssue) and expect in issue.message, issue


def test_messages_column_wins_and_must_end_with_the_assistant() -> None:
    fields = FieldMapping(messages="chat")
    good = {"chat": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                     {"role": "assistant", "content": "a"}]}
    assert isinstance(to_record(good, "f:1", Task.INSTRUCTION, fields, []), Record)
    bad = {"chat": [{"role": "user", "content": "u"}]}
    issue = to_record(bad, "f:2", Task.INSTRUCTION, fields, [])
    assert isinstance(issue, SchemaIssue) and "assistant" in issue.message


def _records(rows: list[dict]) -> list[Record]:
    out = []
    for i, r in enumerate(rows):
        rec = to_record(r, f"f:{i}", Task.INSTRUCTION, FieldMapping(), [])
        assert isinstance(rec, Record)
        out.append(rec)
    return out


def test_dedup_ignores_case_and_spacing() -> None:
    recs = _records([{"prompt": "Hello  there", "completion": "x"}, {"prompt": "hello there", "completion": "X"},
                     {"prompt": "other", "completion": "x"}])
    assert len(augment(recs, [AugmentationStep(type="dedup")], Task.INSTRUCTION)) == 2


def test_noise_perturbs_prompts_only_and_is_seeded() -> None:
    recs = _records([{"prompt": "one two three four five six seven eight", "completion": "keep me intact"}])
    steps = [AugmentationStep(type="noise", probability=0.5, copies=3, seed=1)]
    out = augment(recs, steps, Task.INSTRUCTION)
    assert len(out) == 4
    assert all(r.data["messages"][1]["content"] == "keep me intact" for r in out)
    assert any(r.data["messages"][0]["content"] != recs[0].data["messages"][0]["content"] for r in out[1:])
    again = augment(recs, steps, Task.INSTRUCTION)
    assert [r.data for r in again] == [r.data for r in out]
    import random

    assert noise_words("single", 1.0, random.Random(0)) == "single"


def test_paraphrase_rewrites_the_prompt_with_templates() -> None:
    recs = _records([{"prompt": "Name a colour.", "completion": "red"}])
    out = augment(recs, [AugmentationStep(type="paraphrase", copies=2, seed=3)], Task.INSTRUCTION)
    assert len(out) == 3
    assert all("name a colour." in r.data["messages"][0]["content"].lower() for r in out)
    assert out[1].data["messages"][0]["content"] != "Name a colour."


def test_augmentations_that_do_not_fit_the_task_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="task text has none"):
        augment([], [AugmentationStep(type="noise")], Task.TEXT)
    with pytest.raises(ConfigError, match="paraphrase"):
        augment([], [AugmentationStep(type="paraphrase")], Task.CLASSIFICATION)


def test_loss_is_masked_to_the_completion(tiny_lm: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_lm)
    messages = [{"role": "user", "content": "What is two plus two?"}, {"role": "assistant", "content": "four"}]
    ex = tokenize_instruction(tok, messages, 128)
    labelled = [t for t, lab in zip(ex["input_ids"], ex["labels"], strict=True) if lab != IGNORE_INDEX]
    assert tok.decode(labelled) == "four<|im_end|>\n"  # the turn as the template closes it
    assert ex["labels"][0] == IGNORE_INDEX


def test_multi_turn_chats_train_on_every_assistant_turn(tiny_lm: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_lm)
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "bye"}, {"role": "assistant", "content": "goodbye"}]
    ex = tokenize_instruction(tok, messages, 128)
    labelled = [t for t, lab in zip(ex["input_ids"], ex["labels"], strict=True) if lab != IGNORE_INDEX]
    assert tok.decode(labelled) == "hello<|im_end|>\ngoodbye<|im_end|>\n"


def test_packing_fills_blocks_with_whole_examples_and_keeps_the_mask() -> None:
    examples = [{"input_ids": [1, 2, 3], "attention_mask": [1] * 3, "labels": [-100, 2, 3]} for _ in range(5)]
    packed = pack(examples, 7)
    assert [len(p["input_ids"]) for p in packed] == [6, 6, 3]  # no example is split across blocks
    assert packed[0]["labels"] == [-100, 2, 3, -100, 2, 3]
    assert packed[0]["position_ids"] == [0, 1, 2, 0, 1, 2]  # each example is its own sequence


def test_validation_split_is_seeded_and_disjoint() -> None:
    recs = _records(ROWS * 2)
    train, val = split_validation(recs, 0.25, seed=5)
    assert len(val) == 3 and len(train) == 9
    assert {id(r) for r in train}.isdisjoint({id(r) for r in val})
    assert [r.where for r in split_validation(recs, 0.25, seed=5)[1]] == [r.where for r in val]
