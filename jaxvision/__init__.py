"""jaxvision: torchvision's models in pure-functional Flax."""
from jaxvision import models as _models  # noqa: F401  (registers the families)
from jaxvision.api import create_model, load_pretrained
from jaxvision.place import place_pretrained, pretrained_backbone
from jaxvision.registry import list_models, model_info

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "load_pretrained", "model_info", "place_pretrained",
           "pretrained_backbone"]
