"""Pure policy over plain data: the request form, the roster policy, the queue's states, the texts."""
