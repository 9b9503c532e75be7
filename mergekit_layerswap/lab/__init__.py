"""The lab: layer swapping's experiment in miniature (two languages, a base, two experts)."""
