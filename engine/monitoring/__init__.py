"""What ops watch: queue figures, heartbeats, dead letters, history, metrics."""
