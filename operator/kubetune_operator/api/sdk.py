"""The API models as a small Python SDK: build an object in Python, dump it as a manifest."""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel


def manifest(obj: BaseModel) -> dict[str, Any]:
    """What a user would write: the fields that were set, camelCase, without status."""
    body = obj.model_dump(by_alias=True, mode="json", exclude_unset=True, exclude_none=True, exclude={"status"})
    full = obj.model_dump(by_alias=True, mode="json", include={"api_version", "kind"})
    head = {"apiVersion": full["apiVersion"], "kind": full["kind"]}
    return {**head, **{k: v for k, v in body.items() if k not in head}}


def to_yaml(obj: BaseModel) -> str:
    """The manifest as YAML, ready for `kubectl apply -f -`."""
    return yaml.safe_dump(manifest(obj), sort_keys=False)
