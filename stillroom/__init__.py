"""Stillroom: legitimate LLM distillation with provenance on every row."""

__version__ = "0.1.0"
