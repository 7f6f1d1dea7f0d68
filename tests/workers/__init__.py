"""Tests of haven_agent.workers."""
