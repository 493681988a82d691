import os


class DataError(ValueError):
    """Bad data input; the message names the path or config field and what was expected."""


def require_root(root: str, field: str, holding: str) -> None:
    """A dataset's root folder (config field ``field``) must be given and exist."""
    if not root:
        raise DataError(f"{field} is empty: give --config.{field}=DIR ({holding})")
    if not os.path.isdir(root):
        raise DataError(f"{root}: no such directory ({field})")
