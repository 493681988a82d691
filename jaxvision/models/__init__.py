"""Importing this package registers every model family."""
from jaxvision.models import resnet  # noqa: F401
from jaxvision.models import vit  # noqa: F401
from jaxvision.models import mobilenet  # noqa: F401
from jaxvision.models import googlenet  # noqa: F401
from jaxvision.models import inception  # noqa: F401
from jaxvision.models import vgg  # noqa: F401
from jaxvision.models import segmentation  # noqa: F401
