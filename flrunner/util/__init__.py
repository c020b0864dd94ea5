"""flrunner.util."""
