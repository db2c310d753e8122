"""HTTP around the routes: the server (uvicorn, TLS, signals), API keys, body limits, error bodies,
server-sent events, metrics and the access log."""
