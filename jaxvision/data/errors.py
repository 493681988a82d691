class DataError(ValueError):
    """Bad data input; the message names the path or config field and what was expected."""
