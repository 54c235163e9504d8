"""Errors of the notifier."""
from __future__ import annotations


class NotifierError(Exception):
    """Root of the notifier's errors."""


class DeliveryFailed(NotifierError):
    """A receiver refused an alert or could not be reached; the delivery is tried again later."""
