"""Bottleneck parts: encoder features -> the code (`bottleneck.kind=<module name>`)."""
