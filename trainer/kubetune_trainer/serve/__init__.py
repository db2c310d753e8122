"""kubetune-serve: the `transformers` serving runtime, an OpenAI-compatible HTTP server.

It serves one model: a plain Hugging Face directory, a kubetune model version (a directory with
`manifest.json`, checked before the server starts), or a base model plus a LoRA adapter. See
docs/serving.md for the routes, settings and error bodies.
"""
