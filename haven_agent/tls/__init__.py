"""
TLS material: the served certificate (loaded, or self-signed once), its
reload on SIGHUP and expiry warnings, the client identity a certificate
gives, and why a handshake failed, in words.
"""
