"""flrunner.admin."""
