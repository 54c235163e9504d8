"""The web: JobLog index at the root, run details, open orders, the Jobs Monitor, JSON API."""
