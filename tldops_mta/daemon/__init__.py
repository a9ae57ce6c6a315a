"""tldops serve: the supervisor of the SMTP loop and its children, readiness, health."""
