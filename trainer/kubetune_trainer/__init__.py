"""kubetune trainer: the training entrypoint run by torchrun, data checks, evaluation, artifacts, serving."""

__version__ = "0.1.0"
