"""parent.jobs."""
