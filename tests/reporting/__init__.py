"""Tests of haven_agent.reporting."""
