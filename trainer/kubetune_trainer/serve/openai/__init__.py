"""The OpenAI-compatible protocol: request bodies (schemas) and the routes that answer them
(/v1/completions, /v1/chat/completions, /v1/models, /v1/classify, /health, /metrics)."""
