"""The one error type users see for bad input.

Every user-settable value is validated where it enters; a failure raises `ConfigError`, a
`ValueError` whose message is one line naming the parameter and the allowed values. The CLI turns it
into `error: <message>` and exit status 2.
"""

import contextlib
import contextvars

_THROUGH_PARSER = contextvars.ContextVar("sparse_rl_errors_through_parser", default=False)


class ParserPassThrough(Exception):
    """Carries a ConfigError out of a command-line parser (tyro) that would otherwise reformat
    every ValueError raised by a constructor into a multi-line box."""

    def __init__(self, error: "ConfigError"):
        super().__init__(str(error))
        self.error = error


@contextlib.contextmanager
def through_parser():
    """While active, constructing a ConfigError yields a `ParserPassThrough` carrying it; the
    caller catches that outside the parser and raises the ConfigError itself."""
    token = _THROUGH_PARSER.set(True)
    try:
        yield
    except ParserPassThrough as passed:
        raise passed.error from None
    finally:
        _THROUGH_PARSER.reset(token)


class ConfigError(ValueError):
    """Bad user input: one line, naming the parameter and what is allowed."""

    def __new__(cls, *args, **kwargs):
        error = super().__new__(cls, *args, **kwargs)
        if _THROUGH_PARSER.get():
            error.__init__(*args, **kwargs)
            return ParserPassThrough(error)
        return error

    def __init__(self, field: str, problem: str, allowed: str | None = None):
        message = f"{field}: {problem}"
        if allowed:
            message += f" (allowed: {allowed})"
        super().__init__(message)
        self.field = field


def check(condition: bool, field: str, problem: str, allowed: str | None = None) -> None:
    """Raise `ConfigError(field, problem, allowed)` unless `condition` holds."""
    if not condition:
        raise ConfigError(field, problem, allowed)


def check_choice(value, field: str, choices) -> None:
    """Refuse `value` unless it is one of `choices`."""
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(field, f"unknown value {value!r}", ", ".join(map(str, choices)))
