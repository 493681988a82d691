"""configs/compose_detection.py and configs/compose_segmentation.py: each names a non-ResNet
backbone in model.kwargs.backbone, and still trains when the command line swaps it for another
family (tiny sizes here; reaching their metrics is the configs' own job, measured in the README)."""
import json
import os

import numpy as np
import pytest

from jaxvision.registry import get_spec
from jaxvision.train.config import apply_overrides, load_config_file
from jaxvision.train.loop import train

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
# a few steps on 32-px shapes, no warm-up, no loader worker: the point is the swap, not the size
TINY = ["--config.data.shapes.num_train=48", "--config.data.shapes.num_val=8",
        "--config.data.shapes.image_size=32", "--config.data.image_size=32",
        "--config.data.batch_size=8", "--config.data.eval_batch_size=8",
        "--config.data.num_workers=0", "--config.train.epochs=1", "--config.train.log_every=2",
        "--config.schedule.warmup.length=0", "--config.logging.num_images=0",
        "--config.logging.tensorboard=false", "--config.conv_lowering=xla"]
SWAPS = {
    "compose_detection.py": ("mobilenet_v3_small", [
        "--config.data.resize_size=32", "--config.data.detection.max_size=32",
        "--config.data.detection.canvas=32", "--config.model.kwargs.neck_kwargs.out_channels=32",
        "--config.model.kwargs.head_kwargs.num_convs=1"]),
    "compose_segmentation.py": ("shufflenet_v2_x0_5", [
        "--config.data.resize_size=32", "--config.model.kwargs.head_kwargs.head_channels=16"]),
}


def _config(name, overrides=()):
    return apply_overrides(load_config_file(os.path.join(CONFIGS, name)), list(overrides))


@pytest.mark.parametrize("name", sorted(SWAPS))
def test_config_names_a_backbone_that_is_not_a_resnet(name):
    backbone = _config(name).model.kwargs.backbone
    assert get_spec(backbone).family != "resnet", backbone


@pytest.mark.parametrize("name", [
    # the detector's run costs ~85 s of CPU (its eval step compiles NMS): over the suite's
    # budget, so it runs with -m sweep; the segmenter's (~45 s of CPU) stays in the default run
    pytest.param("compose_detection.py", marks=pytest.mark.sweep),
    "compose_segmentation.py"])
def test_config_trains_with_another_backbone_family_from_the_command_line(name, tmp_path):
    backbone, sizes = SWAPS[name]
    own = _config(name).model.kwargs.backbone
    assert get_spec(backbone).family != get_spec(own).family
    c = _config(name, [f"--config.model.kwargs.backbone={backbone}", *TINY, *sizes])
    assert c.model.kwargs.backbone == backbone
    result = train(c, str(tmp_path), log=lambda *_: None)
    assert result["step"] == 6
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["model"]["kwargs"]["backbone"] == backbone
    with open(tmp_path / "metrics.jsonl") as f:
        losses = [r["train/loss"] for r in map(json.loads, f) if "train/loss" in r]
    assert len(losses) == 3 and np.all(np.isfinite(losses)), losses
    assert losses[-1] < losses[0], losses
