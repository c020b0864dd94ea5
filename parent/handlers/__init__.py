"""parent.handlers."""
