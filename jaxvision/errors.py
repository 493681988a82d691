"""The errors any floor of jaxvision may raise, so that raising one imports nothing above it."""


class ConversionError(ValueError):
    """Weights that do not fit the model, or a file that holds no weights."""
