"""parent.sites."""
