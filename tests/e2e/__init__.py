"""End-to-end tests: real twistd processes in front of a real dockerd and podman."""
