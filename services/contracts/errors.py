"""Errors of the contract package."""


class ContractError(Exception):
    """Root of the contract's errors."""
