"""Models: sources (package, hub, local, scratch), the student, masked-LM helpers, model inputs."""
