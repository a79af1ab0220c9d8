"""bench: a benchmark harness for parameter-efficient fine-tuning of vision transformers."""

__version__ = "0.1.0"
