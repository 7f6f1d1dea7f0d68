"""
The agent's log: the text format's fast path, the JSON lines format, and
`--log-level`.
"""
