"""The one error type users see for bad input.

Every user-settable value is validated where it enters; a failure raises `ConfigError`, a
`ValueError` whose message is one line naming the parameter and the allowed values. The CLI turns it
into `error: <message>` and exit status 2.
"""


class ConfigError(ValueError):
    """Bad user input: one line, naming the parameter and what is allowed."""

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
