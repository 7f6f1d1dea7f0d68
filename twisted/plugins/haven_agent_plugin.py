"""twistd dropin: makes `twistd haven-agent` available without importing the agent."""

from twisted.application.service import ServiceMaker

havenAgent = ServiceMaker(
    "haven-agent",
    "haven_agent.tap",
    "Docker API over TLS with Basic auth, plus a node reporter for Haven",
    "haven-agent",
)
