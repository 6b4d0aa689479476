"""The error every format's verifier raises, and the one way it is raised."""

from __future__ import annotations

from typing import NoReturn

from ffitool.errors import InputError


class VerificationError(InputError):
    """The packed file is not what was intended; the original is left untouched."""


def fail(message: str) -> NoReturn:
    """Stop the pack: the staged file differs from the plan in the way `message` says."""
    raise VerificationError(f"packed file failed verification: {message}")
