"""Operator tasks: statistics, outreach, personal data, housekeeping, the files the configuration names."""
