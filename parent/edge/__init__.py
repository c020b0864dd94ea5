"""parent.edge."""
