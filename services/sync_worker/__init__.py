"""The sync worker: runs jobs and publishes every run's lifecycle and step events."""
