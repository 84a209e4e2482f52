"""Loss parts: the objective's data term (`loss.name=<module name>`)."""
