"""The peer: serves chunks, downloads from the swarm, announces to trackers."""
