"""parent.launchers."""
