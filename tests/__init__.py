"""Tests for haven-agent; run with `python -m twisted.trial tests`."""
