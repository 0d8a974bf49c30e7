"""The one error type users see for bad input.

Every user-settable value is validated where it enters; a failure raises `ConfigError`, a
`ValueError` whose message is one line naming the parameter and the allowed values. The CLI turns it
into `error: <message>` and exit status 2.
"""

import contextlib
import contextvars
import dataclasses
import functools
import io
import math
import numbers
import re
import sys
import types
import typing

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
    caller catches that outside the parser and raises the ConfigError itself.

    The parser's own usage errors (tyro prints a multi-line box to stderr and exits 2: a value
    that does not parse, an unknown flag, a missing value) are captured too and raised as a
    one-line `ConfigError` naming the flag. `--help` (exit 0) and anything else the parser writes
    to stderr pass through unchanged."""
    token = _THROUGH_PARSER.set(True)
    captured = io.StringIO()
    usage_error = None
    try:
        with contextlib.redirect_stderr(captured):
            yield
    except ParserPassThrough as passed:
        raise passed.error from None
    except SystemExit as exit_:
        if exit_.code in (0, None):
            raise
        usage_error = parser_message(captured.getvalue()) or ("arguments", f"exit status {exit_.code}")
    finally:
        _THROUGH_PARSER.reset(token)
        if usage_error is None and captured.getvalue():
            sys.stderr.write(captured.getvalue())
    if usage_error is not None:
        raise ConfigError(*usage_error) from None


_BOX_CHARS = "│╭╮╰╯─┃┏┓┗┛━ "


def parser_message(text: str) -> tuple[str, str] | None:
    """(flag, problem) from a command-line parser's error box (tyro), or None if `text` holds none.

    The box's first section is the message (wrapped over several lines); a later "Perhaps you
    meant" section contributes the suggested flags."""
    body, suggestions, section, suggesting = [], [], 0, False
    for raw in text.splitlines():
        line = raw.strip().strip(_BOX_CHARS).strip()
        if raw.strip().startswith(("╭", "╰")):
            continue  # title / bottom border
        if not line:
            if "─" in raw or "━" in raw:  # a horizontal rule starts a new section
                section, suggesting = section + 1, False
            continue
        if section == 0:
            body.append(line)
        elif line.startswith("Perhaps you meant"):
            suggesting = True
        elif suggesting and line.startswith("--") and len(suggestions) < 3:
            suggestions.append(line.split()[0])
    if not body:
        return None
    message = re.sub(r"\s+", " ", " ".join(body)).strip()
    match = re.match(r"Error parsing (--?[\w.-]+):\s*(.*)", message)
    if match:
        flag, problem = match.group(1), match.group(2)
    else:
        found = re.search(r"(--[A-Za-z0-9][\w.-]*)", message)
        flag, problem = (found.group(1) if found else "arguments"), message
    problem = problem[:1].lower() + problem[1:]
    if suggestions:
        problem += f"; did you mean {' or '.join(suggestions)}?"
    return flag, problem


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


class NumericalError(RuntimeError):
    """Training produced NaN or Inf (in the loss, the gradients or the parameters).

    Not a `ValueError`: the input was valid, the run diverged. The message is one line naming the
    step and the first offending parameter (its path, e.g. "q/mlp/~/linear_0/w"); the CLI prints it
    and exits with status 1. `step`, `parameter` (path or None) and `values` (the non-finite
    metrics by name) are kept as attributes."""

    def __init__(self, step: int, parameter: str | None, values: dict | None = None, note: str = ""):
        self.step = int(step)
        self.parameter = parameter
        self.values = dict(values or {})
        parts = [f"numerical fault at step {self.step}:"]
        if self.values:
            parts.append("non-finite " + ", ".join(f"{k}={v}" for k, v in self.values.items()) + ";")
        if parameter is not None:
            parts.append(f"first non-finite parameter: {parameter}")
        else:
            parts.append("parameters are finite")
        message = " ".join(parts)
        if note:
            message += f" ({note})"
        super().__init__(message)


class RunFileError(RuntimeError):
    """A file of a run or sweep directory is missing, corrupt, inconsistent with what a checkpoint
    recorded, or cannot be written (disk full, permissions).

    The message is one line naming the file and what to do. Not a `ConfigError`: the command line
    was valid; `exit_status` says how the CLI exits (1: the run could not go on; 2 where the user's
    request itself cannot be met, e.g. a checkpoint of other settings). A run stopped by this error
    is left as it was (resumable, not FAILED)."""

    exit_status = 1


def file_error(path, problem: str, todo: str) -> RunFileError:
    """`RunFileError("<path>: <problem>; <todo>")`."""
    return RunFileError(f"{path}: {problem}; {todo}")


def os_error_message(error: OSError) -> str:
    """One line for an OSError of a file operation: the file, the reason, what to do."""
    import errno

    where = error.filename if error.filename is not None else "a file"
    reason = error.strerror or str(error) or type(error).__name__
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        todo = "free disk space, then continue with --resume"
    elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        todo = "make it writable (or choose another directory), then continue with --resume"
    else:
        todo = "fix the file or directory, then continue with --resume"
    return f"{where}: {reason}; {todo}"


def locate(error: BaseException, path) -> BaseException:
    """`error`, naming `path` when it is an OSError that names no file (a write into an open file
    on a full disk), so that its one-line message says where."""
    if isinstance(error, OSError) and error.filename is None:
        error.filename = str(path)
    return error


def exit_status(error: BaseException) -> int | None:
    """The CLI's exit status for an error a user can cause or meet: 2 for bad input
    (`ConfigError`), 1 for a run that could not go on (`NumericalError`, `RunFileError`, an
    `OSError` such as a full disk); None for anything else (a bug: its traceback is shown)."""
    if isinstance(error, ConfigError):
        return 2
    if isinstance(error, RunFileError):
        return int(error.exit_status)
    if isinstance(error, (NumericalError, OSError, MemoryError)):
        return 1
    return None


def one_line(error: BaseException) -> str:
    """The one-line message the CLI prints for an error with an `exit_status`."""
    if isinstance(error, OSError) and not isinstance(error, RunFileError):
        return os_error_message(error)
    if isinstance(error, MemoryError):
        return "out of memory; use fewer steps, a smaller replay buffer or smaller networks"
    return " ".join(str(error).split()) or type(error).__name__


class GroupResumeMismatch(ConfigError):
    """The runs of a group cannot resume together (their newest valid checkpoints are at different
    steps, or some have none): each can still resume on its own (the sweep then runs them alone)."""


def leaves_run_resumable(error: BaseException) -> bool:
    """Whether a run stopped by `error` is left as it was rather than marked FAILED: bad input,
    a refused resume, a missing or corrupt file, a full disk. Only a diverged run and unexpected
    errors (bugs) mark a run FAILED; a sweep then skips it until `--retry-failed`."""
    return isinstance(error, (ConfigError, RunFileError, OSError, MemoryError))


# --- type checks of config dataclasses --------------------------------------------------------

def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if tp is type(None):
        return "None"
    if tp is bool:
        return "True or False"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a finite number"
    if tp is str:
        return "a string"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a sequence, each {_describe(args[0])}"
        return f"a sequence of {len(args)} items"
    if origin is typing.Literal:
        return ", ".join(map(repr, args))
    return getattr(tp, "__name__", str(tp))


_REJECT = object()


def _conform(tp, value):
    """`value` as type `tp` (ints for int fields, floats for float fields, tuples for tuple fields),
    or `_REJECT`. Types this does not know are accepted as they are."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is typing.Any:
        return value
    if origin is typing.Annotated:
        return _conform(args[0], value)
    if origin in (typing.Union, types.UnionType):
        for arm in args:
            out = _conform(arm, value)
            if out is not _REJECT:
                return out
        return _REJECT
    if tp is type(None):
        return None if value is None else _REJECT
    if tp is bool:
        return bool(value) if isinstance(value, bool) or type(value).__name__ == "bool_" else _REJECT
    if tp is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool) and type(value).__name__ != "bool_":
            return int(value)
        return _REJECT
    if tp is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and type(value).__name__ != "bool_":
            value = float(value)
            return value if math.isfinite(value) else _REJECT
        return _REJECT
    if tp is str:
        return value if isinstance(value, str) else _REJECT
    if origin is tuple:
        if not isinstance(value, (tuple, list)):
            return _REJECT
        if len(args) == 2 and args[1] is Ellipsis:
            items = [_conform(args[0], v) for v in value]
        elif not args:
            return tuple(value)
        else:
            if len(value) != len(args):
                return _REJECT
            items = [_conform(a, v) for a, v in zip(args, value)]
        return _REJECT if any(i is _REJECT for i in items) else tuple(items)
    if origin is typing.Literal:
        return value if value in args else _REJECT
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return value if isinstance(value, tp) else _REJECT
    return value


@functools.lru_cache(maxsize=None)
def _hints(cls) -> dict:
    try:
        return typing.get_type_hints(cls, include_extras=True)
    except Exception:  # unresolvable annotations: check nothing rather than fail
        return {}


def check_fields(obj, skip: tuple[str, ...] = ()) -> None:
    """Check every field of the (frozen) dataclass `obj` against its annotation; raise
    `ConfigError` naming the first field whose value has the wrong type.

    Called first in a config's `__post_init__`, so that range checks after it compare numbers with
    numbers (a string never reaches `value > 0` and a TypeError). Rules: `int` takes integers (not
    bools), `float` takes finite real numbers (not bools; NaN and Inf are refused), `bool` takes
    bools, `str` strings, `tuple[T, ...]` lists or tuples of T, `X | None` also None, a dataclass
    type its instances. Values are normalised in place (numpy ints -> int, ints -> float for float
    fields, lists -> tuples). Fields in `skip` (e.g. a network field that also takes a callable)
    and annotations other than these are left to the config's own checks."""
    hints = _hints(type(obj))
    for field in dataclasses.fields(obj):
        if field.name in skip or field.name not in hints:
            continue
        value = getattr(obj, field.name)
        out = _conform(hints[field.name], value)
        if out is _REJECT:
            raise ConfigError(field.name, f"expected {_describe(hints[field.name])}, got {_short(value)}")
        if out is not value:
            object.__setattr__(obj, field.name, out)
