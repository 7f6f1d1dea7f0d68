"""haven-agent: the node agent of a Haven Docker cluster."""

__version__ = "0.1.0"
