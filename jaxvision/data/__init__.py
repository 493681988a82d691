"""Data: sources (shapes, image folders) -> transforms -> grain loaders."""
from jaxvision.data.config import default_data_config
from jaxvision.data.errors import DataError
from jaxvision.data.loader import Data, make_data

__all__ = ["Data", "DataError", "default_data_config", "make_data"]
