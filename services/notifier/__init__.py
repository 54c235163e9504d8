"""The notifier: alerts on failures, missed schedules, slow runs and a projection behind."""
