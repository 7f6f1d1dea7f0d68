"""
`--workers N`: the proxy served from several processes sharing its ports.
"""
