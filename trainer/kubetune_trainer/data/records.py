"""Field mapping: a source row becomes a canonical record of its task, or a schema issue.

Canonical records:
- instruction: `{"messages": [{"role", "content"}, ...]}`; a prompt/completion row becomes a
  user turn and an assistant turn. The last turn must be the assistant's.
- text: `{"text": str}`
- classification: `{"text": str, "label": str}` with label one of the configured labels.

A record with an empty field is still returned, with `empty=True`: the quality report counts
empty rows separately from malformed ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubetune_trainer.contract.config import FieldMapping, Task

ROLES = {"system", "user", "assistant"}
MAX_LISTED_COLUMNS = 20


@dataclass(frozen=True)
class SchemaIssue:
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class Record:
    data: dict[str, Any]
    where: str
    empty: bool = False


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _as_text(value: Any, column: str, where: str) -> str | SchemaIssue:
    if value is None:
        return ""
    if isinstance(value, float) and value != value:  # NaN from pandas/csv
        return ""
    if isinstance(value, (str, int, float)):
        return str(value)
    return SchemaIssue(where, f"column {column!r} must be a string, got {type(value).__name__}")


def _messages(value: Any, column: str, where: str) -> list[dict[str, str]] | SchemaIssue:
    if isinstance(value, str):  # csv/sql cells hold the chat as JSON text
        import json

        try:
            value = json.loads(value)
        except ValueError:
            return SchemaIssue(where, f"column {column!r} is not a JSON list of messages")
    if not isinstance(value, list) or not value:
        return SchemaIssue(where, f"column {column!r} must be a non-empty list of {{role, content}}")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            return SchemaIssue(where, f"{column}[{i}] must be an object with role and content")
        if m["role"] not in ROLES:
            return SchemaIssue(where, f"{column}[{i}].role is {m['role']!r}; expected one of {sorted(ROLES)}")
        if not isinstance(m["content"], str):
            return SchemaIssue(where, f"{column}[{i}].content must be a string")
        out.append({"role": m["role"], "content": m["content"]})
    if out[-1]["role"] != "assistant":
        return SchemaIssue(where, f"the last message of {column!r} must be the assistant's (the completion)")
    return out


def _missing_column(where: str, column: str, field: str, row: dict[str, Any], need: str) -> SchemaIssue:
    found = sorted(str(c) for c in row)
    listed = ", ".join(repr(c) for c in found[:MAX_LISTED_COLUMNS]) + (
        f", … ({len(found) - MAX_LISTED_COLUMNS} more)" if len(found) > MAX_LISTED_COLUMNS else "")
    return SchemaIssue(where, f"missing column {column!r} (data.fields.{field}); {need}; this row has columns "
                              f"[{listed}]: set data.fields to the names your data uses")


def to_record(row: dict[str, Any], where: str, task: Task | str, fields: FieldMapping,
              labels: list[str]) -> Record | SchemaIssue:
    """Map one source row onto its task's canonical record; a SchemaIssue says what is wrong with it
    (a missing column names its `data.fields` setting and lists the columns the row has)."""
    task = Task(task)
    if task == Task.INSTRUCTION:
        if fields.messages and fields.messages in row:
            msgs = _messages(row[fields.messages], fields.messages, where)
            if isinstance(msgs, SchemaIssue):
                return msgs
            empty = any(_blank(m["content"]) for m in msgs if m["role"] != "system")
            return Record({"messages": msgs}, where, empty)
        missing = [(c, f) for c, f in ((fields.prompt, "prompt"), (fields.completion, "completion")) if c not in row]
        if missing:
            chat = (f"a chat column {fields.messages!r} (data.fields.messages)" if fields.messages
                    else "a chat column named in data.fields.messages")
            need = (f"instruction rows need columns {fields.prompt!r} and {fields.completion!r} "
                    f"(data.fields.prompt, data.fields.completion) or {chat}")
            return _missing_column(where, *missing[0], row, need)
        prompt = _as_text(row[fields.prompt], fields.prompt, where)
        completion = _as_text(row[fields.completion], fields.completion, where)
        for v in (prompt, completion):
            if isinstance(v, SchemaIssue):
                return v
        assert isinstance(prompt, str) and isinstance(completion, str)
        msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
        return Record({"messages": msgs}, where, _blank(prompt) or _blank(completion))
    if fields.text not in row:
        return _missing_column(where, fields.text, "text", row, f"{task} rows need a text column")
    text = _as_text(row[fields.text], fields.text, where)
    if isinstance(text, SchemaIssue):
        return text
    if task == Task.TEXT:
        return Record({"text": text}, where, _blank(text))
    if fields.label not in row:
        return _missing_column(where, fields.label, "label", row, "classification rows need a label column")
    label = _as_text(row[fields.label], fields.label, where)
    if isinstance(label, SchemaIssue):
        return label
    if _blank(label):
        return Record({"text": text, "label": ""}, where, True)
    if label not in labels:
        return SchemaIssue(where, f"label {label!r} is not one of the configured labels {labels}")
    return Record({"text": text, "label": label}, where, _blank(text))


def record_key(data: dict[str, Any]) -> str:
    """The text that identifies a record for duplicate detection (case and spacing ignored)."""
    if "messages" in data:
        raw = "\x1e".join(f"{m['role']}\x1f{m['content']}" for m in data["messages"])
    else:
        raw = f"{data.get('text', '')}\x1f{data.get('label', '')}"
    return " ".join(raw.lower().split())


def record_text(data: dict[str, Any]) -> str:
    """All the text of a record, for token-length statistics."""
    if "messages" in data:
        return "\n".join(m["content"] for m in data["messages"])
    return str(data.get("text", ""))
