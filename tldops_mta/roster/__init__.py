"""The roster: its rows and history, its formats, the broadcast, redelegation watch, Mailman."""
