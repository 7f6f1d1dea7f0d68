"""Tests of haven_agent.logs."""
