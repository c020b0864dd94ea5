"""flrunner.transport."""
