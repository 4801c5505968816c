"""olladist: a declarative GitOps reconciler for an Ollama cluster."""

__version__ = "0.1.0"
