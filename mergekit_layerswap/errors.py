"""The package's one error type for bad input, and how any library error is shown."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class InputError(ValueError):
    """Bad input from the user (a config, a suite, a path, an option): `problems` holds one
    line per problem, each naming the field and the fix. The CLI prints them and exits 2."""

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class RunError(RuntimeError):
    """A run that failed outside its input (a full disk, the Hub refusing an upload, a path
    that resolves outside the output folder): the CLI prints its one line and exits 1."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def did_you_mean(name: object, known: Iterable[str], otherwise: str = "") -> str:
    """``did you mean 'x'?`` for the known name closest to a misspelled `name`, else
    `otherwise`."""
    guess = difflib.get_close_matches(str(name), list(known), n=1)
    return f"did you mean {guess[0]!r}?" if guess else otherwise
