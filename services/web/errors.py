"""Errors of the web service; the middleware turns them into 4xx pages or JSON."""


class WebError(Exception):
    """Root of the web's errors."""


class NotFound(WebError):
    """No such run, job or page."""


class BadRequest(WebError):
    """A parameter that cannot be understood."""
