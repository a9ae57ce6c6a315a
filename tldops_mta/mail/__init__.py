"""Our own outgoing mail: the durable outbox, composing from the texts, TLP labels, our DKIM key."""
