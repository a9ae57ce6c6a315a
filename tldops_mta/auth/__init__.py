"""Who sent a message: strict addresses, header facts, DKIM, IANA lookups, the trust verdict,
the purposes of tokens."""
