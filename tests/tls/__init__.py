"""Tests of haven_agent.tls."""
