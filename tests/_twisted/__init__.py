"""Tests of haven_agent._twisted."""
