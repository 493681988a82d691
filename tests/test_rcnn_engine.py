"""Faster R-CNN on the engine: the training loss clips proposals to each image's size as
torchvision's does, and a SIGKILLed run resumes bitwise equal to an uninterrupted one (the RPN's
and RoI heads' samplers draw from the step's rng)."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxvision as jv
from jaxvision.tasks import Detection
from jaxvision.tasks.detection import loss_image_sizes
from jaxvision.train.loop import train
from test_engine_run import check_resumed
from train_configs import TINY_RCNN, tiny_rcnn_config

HERE = os.path.dirname(__file__)


def random_variables(model, x, scale=0.1):
    """Random variables of ``model``'s shapes, without compiling its init (the eval path)."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    leaves, tree = jax.tree.flatten(shapes)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    return tree.unflatten([scale * jax.random.normal(k, a.shape, a.dtype)
                           for k, a in zip(keys, leaves)])


def test_training_loss_clips_the_proposals_to_each_images_size_not_the_canvas():
    model = jv.create_model("fasterrcnn_resnet50_fpn", num_classes=3, **TINY_RCNN)
    x = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3))
    sizes = jnp.array([[20, 28], [32, 24]], jnp.int32)  # (h, w) of each image in the canvas
    batch = {"image": x, "image_size": sizes, "num_boxes": jnp.array([1, 2]),
             "boxes": jnp.array([[[2, 3, 15, 12], [0, 0, 0, 0]],
                                 [[1, 1, 10, 20], [12, 4, 23, 30]]], jnp.float32),
             "classes": jnp.array([[1, 0], [2, 1]], jnp.int32)}
    variables = random_variables(model, x)

    @jax.jit
    def forward(v, b):
        return Detection(num_classes=3).forward(model, v, b, True,
                                                mutable=["batch_stats", "intermediates"],
                                                rngs={"dropout": jax.random.key(2)})

    losses, state = forward(variables, batch)
    # one computation from the RPN through the samplers to the RoI heads: no host round trip
    assert "callback" not in forward.lower(variables, batch).as_text()
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier",
                           "loss_box_reg"}
    assert all(np.isfinite(float(v)) for v in losses.values())
    props = jax.tree.map(np.asarray, state["intermediates"]["proposals"][0])
    for i, (h, w) in enumerate(np.asarray(sizes)):
        boxes = props["boxes"][i][props["valid"][i]]
        assert len(boxes) > 0
        # clipped to this image: no proposal past its right or bottom edge, and some reach it
        # (clipped to the 32 x 32 canvas, they would reach 32)
        assert boxes[:, 2].max() == w and boxes[:, 3].max() == h, (i, boxes.max(0))


def test_only_the_losses_that_use_image_sizes_are_given_them():
    batch = {"image_size": jnp.zeros((1, 2), jnp.int32)}
    for name in ("fasterrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn",
                 "keypointrcnn_resnet50_fpn"):
        assert set(loss_image_sizes(jv.create_model(name), batch)) == {"image_sizes"}, name
    for name in ("retinanet_resnet50_fpn", "fcos_resnet50_fpn", "ssd300_vgg16"):
        assert loss_image_sizes(jv.create_model(name), batch) == {}, name


RUNNER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {here!r})
    from train_configs import tiny_rcnn_config
    from jaxvision.train.loop import train
    train(tiny_rcnn_config(), sys.argv[1], log=lambda *a: print(*a, flush=True))
""")


def start_run(workdir):
    return subprocess.Popen([sys.executable, "-c", RUNNER.format(here=HERE), str(workdir)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


# ~100 s of CPU (one cold compile, two warm subprocesses): in the sweep, for the suite's budget; the
# default suite keeps the one-stage detector's SIGKILL check (test_engine_run), same machinery
@pytest.mark.sweep
@pytest.mark.default_lowering  # the library's lowering in this process too: the subprocesses'
def test_sigkill_then_resume_of_faster_rcnn_is_bitwise_equal_to_uninterrupted(tmp_path):
    # uninterrupted, in this process: its compilations fill the session's cache, which the two
    # subprocesses read
    steps = tiny_rcnn_config().train.steps
    train(tiny_rcnn_config(), str(tmp_path / "straight"), log=lambda *a: None)
    killed_dir = tmp_path / "killed"
    ckpts = killed_dir / "checkpoints"
    victim = start_run(killed_dir)
    deadline = time.time() + 240
    while time.time() < deadline and not (ckpts / "2").is_dir() and victim.poll() is None:
        time.sleep(0.05)
    assert (ckpts / "2").is_dir(), victim.communicate()[0]
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    interrupted_at = max(int(p) for p in os.listdir(ckpts) if p.isdigit())
    assert interrupted_at < steps, "the victim finished before it was killed"
    check_resumed(start_run(killed_dir), interrupted_at, tmp_path / "straight", killed_dir,
                  steps)
