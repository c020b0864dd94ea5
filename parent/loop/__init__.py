"""parent.loop."""
