"""The tracker: a soft-state directory of live peers and what they hold."""
