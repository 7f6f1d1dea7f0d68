"""
Per-credential API policy: which profile each identity gets, and what a
profile lets through (see docs/policy.md).
"""
