"""kubetune operator: API models, pure builders, kopf handlers, GPU admission and the `kubetune` CLI."""

__version__ = "0.1.0"
