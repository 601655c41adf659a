"""Build tooling for the tiny demo model served by llmserver.

Only :mod:`demomodel.corpus` with its parts ``demomodel.corpus_*`` (standard library
only) and :mod:`demomodel.evaluate` (onnxruntime-genai + numpy) are meant to be imported
from the runtime venv; the other modules need the build venv (torch, transformers,
tokenizers).
"""
