"""kubetune trainer: the training entrypoint run by torchrun, data checks, evaluation, artifacts, serving.

- `contract/`: what the operator and the serving runtime share with the trainer (no torch);
- `data/`, `train/`, `report/`, `publish/`: a training run, by what each part does;
- `launcher.py`, `__main__.py`: `kubetune-train` (and `launch`, the pod's main process);
- `serve/`: kubetune-serve, which imports `contract/` and nothing else of the trainer.
"""

__version__ = "0.1.0"
