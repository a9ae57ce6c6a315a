"""The Validator's queue: moves between states and their effects, reminders and expiry, reads."""
