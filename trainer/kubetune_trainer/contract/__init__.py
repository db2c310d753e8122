"""What the trainer, the operator and the serving runtime agree on; the only part of kubetune_trainer
the operator imports.

- `config`: TrainerConfig (operator → trainer) and the exit codes (trainer → operator);
- `results`: the JSON the trainer writes about its work (data quality report, version manifest and
  summary), read by the operator and by kubetune-serve;
- `progress`: the `status.progress` patch rank 0 sends to its FineTuneJob;
- `gates`: how an evaluation gate and its outcome read, in words;
- `formats`: which format (merged or adapter) a version has and which are served;
- `identity`: the shape and digest of the base model an adapter was trained on;
- `logformat`: the one JSON log line format of every kubetune process.

Imports pydantic, python-json-logger and the standard library only (never torch, transformers or
fastapi, nor any other part of kubetune_trainer): the operator image has none of them. Importing
this package imports every module above, so that one import tells whether the contract stays light.
"""

from kubetune_trainer.contract import config, formats, gates, identity, logformat, progress, results

__all__ = ["config", "formats", "gates", "identity", "logformat", "progress", "results"]
