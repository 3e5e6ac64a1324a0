"""EdgeKite's shared core: the envelope, configuration, topic scheme, store and CLI."""

__version__ = "0.1.0"
