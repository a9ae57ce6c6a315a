"""The tldops command."""
