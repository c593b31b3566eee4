"""The exception types for problems a user can fix (bad file, bad flag, wrong model; a full disk).

The CLI prints these as a single line and exits with code 1; anything else is a bug (exit 2).
"""


class UserError(Exception):
    """A problem with the user's input, reported as one line without a traceback.

    `option` names the setting at fault by its library name (e.g. "cache_dtype") when the message
    starts with it; the command line shows it as its flag (--cache-dtype)."""

    def __init__(self, message: str = "", option: str | None = None):
        super().__init__(message)
        self.option = option

    def for_command_line(self) -> str:
        """The message with a leading setting name written as the flag that sets it."""
        text = str(self)
        if self.option and text.startswith(self.option):
            return "--" + self.option.replace("_", "-") + text[len(self.option):]
        return text


class EnvironmentProblem(UserError):
    """A problem of the machine rather than of the input (a full disk, memory exhausted, a folder
    another process holds): it may go away by itself, so batch jobs stop (or wait) instead of
    recording it as an item's result."""


class FolderBusy(EnvironmentProblem):
    """Another process holds the folder's lock."""


def write_failure(e: BaseException) -> str | None:
    """Why writing a file failed (a full disk, permissions), when `e` is such a failure (an
    OSError, or safetensors' own error for a failed write); else None."""
    if isinstance(e, OSError) or type(e).__name__ == "SafetensorError":
        return getattr(e, "strerror", None) or str(e).strip().splitlines()[0]
    return None


def check_output_folder(path, marker: str, what: str, own: tuple[str, ...] = ()) -> None:
    """Refuse to write into `path` unless it is new, empty, already `what` (holds `marker`), or
    holds nothing but `own` names (what an unfinished run of the same command leaves)."""
    from pathlib import Path

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: exists and is not a folder")
    if path.is_dir() and not (path / marker).exists() and any(p.name not in own for p in path.iterdir()):
        raise UserError(f"{path}: not empty and not {what} (no {marker}); choose a new or empty folder")
