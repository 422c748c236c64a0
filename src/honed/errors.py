"""Errors a user can act on. The CLI prints their message without a traceback."""


class HonedError(Exception):
    """Base class: the message names the problem and, where there is one, the file."""


class SpecError(HonedError):
    """The run spec (YAML) is malformed or invalid."""


class DataError(HonedError):
    """A data file is missing, unreadable, or holds bad rows the spec does not allow."""


class ModelError(HonedError):
    """A base model cannot be resolved or loaded safely."""


class RegistryError(HonedError):
    """A registry lookup or update failed (unknown model, version or alias)."""
