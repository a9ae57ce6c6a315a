"""The policy files shipped with tldops-mta, installed as package data (tldops_mta.shipped_rules)."""
