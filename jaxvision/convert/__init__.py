from jaxvision.convert.merge import ConversionError, Report
from jaxvision.convert.torchvision import as_state_dict, load_state_dict

__all__ = ["ConversionError", "Report", "as_state_dict", "load_state_dict"]
