"""ServeSettings: every knob of kubetune-serve, read from the command line, then the environment.

A flag wins over its environment variable, which wins over the default. The operator sets the
environment (it never needs to know the flag syntax); people on a laptop use flags.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

ENV_PREFIX = "KUBETUNE_"


class ServeSettings(BaseModel):
    """Validated settings of one server process."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: Path = Field(description="Model directory: plain HF model, kubetune version, or the base model.")
    adapter: Path | None = Field(None, description="LoRA adapter directory served on top of `model`.")
    served_model_name: str | None = Field(None, min_length=1, max_length=256)
    host: str = "0.0.0.0"
    port: int = Field(8000, ge=0, le=65535)
    api_keys: tuple[str, ...] = Field((), repr=False, description="Accepted bearer keys; empty = no auth.")
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_concurrency: int = Field(2, ge=1, le=1024, description="Requests computing at once.")
    max_queue: int = Field(32, ge=0, le=100_000, description="Requests waiting for a slot; more get 429.")
    queue_timeout: float = Field(60.0, gt=0, le=3600, description="Seconds a request may wait; then 503.")
    max_tokens_limit: int = Field(512, ge=1, le=1_000_000, description="Largest max_tokens a request may ask.")
    max_request_bytes: int = Field(1 << 20, ge=1024, le=1 << 30, description="Largest request body; more get 413.")
    max_batch_inputs: int = Field(64, ge=1, le=10_000, description="Most prompts/inputs in one request.")
    shutdown_timeout: float = Field(60.0, gt=0, le=3600, description="Seconds SIGTERM waits for in-flight requests.")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")
    dtype: str = Field("auto", pattern="^(auto|float32|bfloat16|float16)$")
    log_level: str = Field("info", pattern="^(debug|info|warning|error)$")

    @model_validator(mode="after")
    def _tls_pair(self) -> ServeSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together: give both files or neither")
        return self


def read_api_keys(key_file: Path | None, env_keys: str | None) -> tuple[str, ...]:
    """Keys from a file (one per line, `#` comments; a mounted Secret) and/or a comma-separated list."""
    keys: list[str] = []
    if key_file is not None:
        try:
            text = key_file.read_text()
        except OSError as exc:
            raise ValueError(f"--api-key-file {key_file}: cannot read it ({exc.strerror})") from exc
        keys += [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        if not keys:
            raise ValueError(f"--api-key-file {key_file} holds no key; auth would be silently off")
    if env_keys:
        keys += [k.strip() for k in env_keys.split(",") if k.strip()]
    return tuple(dict.fromkeys(keys))


def _env(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(ENV_PREFIX + name)
    return value if value not in (None, "") else None


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    """The CLI; each flag's default is its KUBETUNE_* variable, so `--help` shows the effective value."""
    p = argparse.ArgumentParser(
        prog="kubetune-serve",
        description="OpenAI-compatible server for a kubetune model version, HF model directory or base+LoRA.",
    )

    def add(flag: str, env: str, help: str, **kw: object) -> None:
        default = _env(environ, env)
        p.add_argument(flag, default=default, help=f"{help} [env {ENV_PREFIX}{env}]", **kw)  # type: ignore[arg-type]

    add("--model", "MODEL", "model directory (plain HF model, kubetune version dir, or base model)")
    add("--adapter", "ADAPTER", "LoRA adapter directory to serve on top of --model")
    add("--served-model-name", "SERVED_MODEL_NAME", "name clients use in `model` (default: from the manifest or dir)")
    add("--host", "HOST", "address to bind (default 0.0.0.0)")
    add("--port", "PORT", "port to bind (default 8000)")
    add("--api-key-file", "API_KEY_FILE", "file with accepted API keys, one per line")
    add("--tls-cert", "TLS_CERT", "PEM certificate (e.g. tls.crt of a cert-manager Secret)")
    add("--tls-key", "TLS_KEY", "PEM private key (tls.key)")
    add("--max-concurrency", "MAX_CONCURRENCY", "requests computing at once (default 2)")
    add("--max-queue", "MAX_QUEUE", "requests waiting for a slot before 429 (default 32)")
    add("--queue-timeout", "QUEUE_TIMEOUT", "seconds a request may wait in the queue before 503 (default 60)")
    add("--max-tokens-limit", "MAX_TOKENS_LIMIT", "largest max_tokens a request may ask (default 512)")
    add("--max-request-bytes", "MAX_REQUEST_BYTES", "largest request body in bytes before 413 (default 1 MiB)")
    add("--max-batch-inputs", "MAX_BATCH_INPUTS", "most prompts or inputs in one request (default 64)")
    add("--shutdown-timeout", "SHUTDOWN_TIMEOUT", "seconds to drain in-flight requests on SIGTERM (default 60)")
    add("--device", "DEVICE", "auto, cpu, cuda or cuda:N (default auto)")
    add("--dtype", "DTYPE", "auto, float32, bfloat16 or float16 (default auto: fp32 on CPU, bf16 on GPU)")
    add("--log-level", "LOG_LEVEL", "debug, info, warning or error (default info)")
    return p


def parse_settings(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> ServeSettings:
    """Parse flags and environment into ServeSettings; raises ValueError with a message naming the input."""
    environ = os.environ if environ is None else environ
    args = build_parser(environ).parse_args(argv)
    if not args.model:
        raise ValueError(f"no model: pass --model DIR or set {ENV_PREFIX}MODEL")
    keys = read_api_keys(Path(args.api_key_file) if args.api_key_file else None, _env(environ, "API_KEYS"))
    given = {k: v for k, v in vars(args).items() if v is not None and k != "api_key_file"}
    return ServeSettings(api_keys=keys, **given)
