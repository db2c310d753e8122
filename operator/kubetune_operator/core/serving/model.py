"""What a ModelDeployment's resolution can answer, as the builders, the rollout and the status see it.

- `ServedModel`: what a server Deployment should load;
- `Waiting`: nothing to serve yet (the version does not exist) or nothing servable (`stuck`:
  someone must change a spec), with a CamelCase reason and a message naming the object, the
  field and the fix;
- `InvalidSpec`: the ModelDeployment's own spec can never work (a `kopf.PermanentError`).

Only the values live here; the rules that choose one (core.serving.resolution) do not, so the
builders depend on the shape of a model and never on how it was picked.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class ServedModel:
    """A model a server Deployment loads, with what is pinned to it when it is first rolled out.

    Options derived from the FineTuneJob's spec (LoRA rank, sequence length, base model) are
    recorded here and stored on the Deployment, so editing the FineTuneJob later never restarts
    the servers of a version already rolled out.
    """

    uri: str
    version: int | None = None
    job: str | None = None
    adapter: bool = False
    base_uri: str | None = None
    passed_gate: bool | None = None
    lora_rank: int | None = None
    max_model_len: int | None = None

    def same_model(self, other: ServedModel | None) -> bool:
        return other is not None and (self.version, self.uri) == (other.version, other.uri)

    @property
    def label(self) -> str:
        return f"version {self.version}" if self.version is not None else self.uri

    def to_annotation(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v is not None}, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_annotation(cls, text: str | None) -> ServedModel | None:
        """The model recorded by `to_annotation`; None for no text or text that does not parse
        (unknown keys, from a newer operator, are ignored)."""
        if not text:
            return None
        try:
            raw = json.loads(text)
            known = {f.name for f in fields(cls)}
            return cls(**{k: v for k, v in raw.items() if k in known})
        except (ValueError, TypeError):
            return None


@dataclass(frozen=True)
class Waiting:
    """Nothing (new) to serve. `stuck`: waiting alone will not help, a spec must change (Degraded)."""

    reason: str
    message: str
    stuck: bool = False
    version: int | None = None  # the version held back, when a promotion rule holds one


@dataclass(frozen=True)
class InvalidSpec:
    """The ModelDeployment's spec can never work; `field` is the path of the culprit."""

    field: str
    message: str
    reason: str = "InvalidSpec"


Resolution = ServedModel | Waiting | InvalidSpec


def hf_repo(uri: str) -> tuple[str, str | None]:
    """hf://org/name@rev -> ("org/name", "rev")."""
    repo, _, rev = uri.removeprefix("hf://").partition("@")
    return repo, rev or None
