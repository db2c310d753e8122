"""The model behind the routes: what to serve (model_source, decided before any weight is read),
loading it, admission to it, turning requests into prompts, and generating or classifying."""
