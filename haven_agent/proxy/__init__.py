"""
The secure Docker API proxy: the TLS listener's service, the gate that
judges each request head (authentication, the read-only routes, the
connection limits, the throttle), the splice to dockerd, and the agent's
own answers (errors, health).
"""
