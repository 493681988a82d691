"""The COCO detection recipes start from ImageNet backbone weights, as torchvision's reference
does (``--weights-backbone``): their FrozenBatchNorm takes torchvision's default eps, not the eps 0
of the published COCO v1 weights that the presets default to."""
import pytest

from jaxvision.train.config import load_config_file


@pytest.mark.parametrize("name", ["retinanet", "fasterrcnn", "maskrcnn"])
def test_coco_recipes_use_torchvisions_frozen_bn_eps(name):
    from torchvision.ops.misc import FrozenBatchNorm2d

    c = load_config_file(f"configs/coco_{name}_resnet50_fpn.py")
    assert c.model.name == f"{name}_resnet50_fpn"
    assert c.model.kwargs["norm_eps"] == FrozenBatchNorm2d(1).eps == 1e-5
