"""The one exception type for mistakes a user can fix (bad file, bad flag, wrong model).

The CLI prints these as a single line and exits with code 1; anything else is a bug (exit 2).
"""


class UserError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""


def check_output_folder(path, marker: str, what: str, own: tuple[str, ...] = ()) -> None:
    """Refuse to write into `path` unless it is new, empty, already `what` (holds `marker`), or
    holds nothing but `own` names (what an unfinished run of the same command leaves)."""
    from pathlib import Path

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: exists and is not a folder")
    if path.is_dir() and not (path / marker).exists() and any(p.name not in own for p in path.iterdir()):
        raise UserError(f"{path}: not empty and not {what} (no {marker}); choose a new or empty folder")
