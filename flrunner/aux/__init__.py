"""flrunner.aux."""
