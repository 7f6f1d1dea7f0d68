"""haven-agent: the node agent of a Haven Docker cluster."""
