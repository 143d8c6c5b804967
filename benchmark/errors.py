"""The one exception type the command line prints without a traceback."""


class UserError(Exception):
    """A problem with what the user gave (settings, data, command line), not a bug.

    The message says what is wrong, where (file, row, column or setting) and what to do.
    Subclasses name the area: config, manifest, splits, method plugins.
    """


class MethodConfigError(UserError):
    """A method's settings cannot work (found before training starts)."""


class RuntimeSettingError(UserError):
    """A ``runtime`` setting that this machine or this run cannot honour."""
