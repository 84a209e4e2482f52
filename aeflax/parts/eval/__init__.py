"""End-of-run evaluation parts: each says when it applies and returns its metrics and figures."""
