"""Tests of haven_agent.proxy."""
