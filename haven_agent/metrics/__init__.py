"""
The agent's Prometheus metrics: the proxy's, the reporter's and the node's,
served at `GET /_agent/metrics` behind the agent's own authentication.
"""
