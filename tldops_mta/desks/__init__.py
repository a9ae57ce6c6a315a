"""One desk per service address: what the worker does with a message sent to it."""
