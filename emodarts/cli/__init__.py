"""The `emodarts` commands (top layer): options, run folders, and the commands that only present results."""
