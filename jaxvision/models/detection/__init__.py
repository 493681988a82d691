"""Detectors composed of a backbone, a neck and a dense head, laid out like torchvision's
``models/detection``: importing this package registers them."""
from jaxvision.models.detection import ssd  # noqa: F401
from jaxvision.models.detection import fpn_detectors  # noqa: F401
from jaxvision.models.detection import ssdlite  # noqa: F401
from jaxvision.models.detection import yolo  # noqa: F401
from jaxvision.models.detection import efficientdet  # noqa: F401
from jaxvision.models.detection import faster_rcnn  # noqa: F401
from jaxvision.models.detection import mask_rcnn  # noqa: F401
from jaxvision.models.detection import keypoint_rcnn  # noqa: F401
