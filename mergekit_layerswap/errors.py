"""The package's one error type for bad input, and how any library error is shown."""

from __future__ import annotations


class InputError(ValueError):
    """Bad input from the user (a config, a suite, a path, an option): `problems` holds one
    line per problem, each naming the field and the fix. The CLI prints them and exits 2."""

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


def first_line(error: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
