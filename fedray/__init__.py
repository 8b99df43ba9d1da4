"""fedray: federated-learning experiments on Ray, built around a federated pill identifier."""

__version__ = "0.1.0"
