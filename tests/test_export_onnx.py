"""ONNX export (jaxvision/train/onnx_lowering.py) run by onnxruntime against ``model.apply``:
the issue's three classifiers on random weights at small inputs, a batch of 2 and of 1 through
one symbolic batch dimension; a segmenter's dict of maps through the exported directory's own
onnxruntime-only loader; and what is refused."""
import os
import subprocess
import sys

import jax
import numpy as np
import onnxruntime
import pytest

import jaxvision as jv
from jaxvision.convert import card
from jaxvision.layers import lowering
from jaxvision.train import export, onnx_lowering
from random_variables import random_variables

# vit_b_16 at 32 px: two patches a side keep the test cheap; the graph is the same at 224
CASES = {"resnet50": ({}, 64), "mobilenet_v3_large": ({}, 64),
         "vit_b_16": ({"image_size": 32}, 32)}


@pytest.mark.parametrize("name", list(CASES))
def test_onnx_export_run_by_onnxruntime_equals_apply(name):
    kwargs, size = CASES[name]
    model = jv.create_model(name, **kwargs)
    x = np.random.default_rng(1).standard_normal((2, size, size, 3)).astype(np.float32)
    variables = random_variables(model, x[:1])
    with lowering.using("xla"):
        want = np.asarray(jax.jit(lambda v, i: model.apply(v, i, train=False))(variables, x))
        proto = onnx_lowering.to_onnx(lambda i: model.apply(variables, i, train=False),
                                      ("batch", size, size, 3), ["logits"])
    session = onnxruntime.InferenceSession(proto.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    assert np.abs(want).max() > 1e-2, "the logits are too small to compare"
    for images, expected in ((x, want), (x[:1], want[:1])):  # one graph, two batch sizes
        (got,) = session.run(["logits"], {"images": images})
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4, err_msg=name)


def test_onnx_export_of_a_segmenter_runs_with_onnxruntime_alone(tmp_path):
    model = jv.create_model("lraspp_mobilenet_v3_large", num_classes=3)
    x = np.random.default_rng(2).standard_normal((2, 48, 40, 3)).astype(np.float32)
    variables = random_variables(model, x[:1])
    item = export.Exportable("lraspp_mobilenet_v3_large", model, dict(variables),
                             {"num_classes": 3}, {"preprocessing": {"crop_size": (48, 40)},
                                                  "source": "random init"})
    out = export.write(item, "onnx", str(tmp_path / "onnx"))
    assert sorted(os.listdir(out)) == ["jaxvision.json", "model.onnx", "run.py"]
    shown = card.directory_card(out)  # what `jaxvision info OUT` prints
    assert shown["num_params"] == sum(np.size(a) for a in jax.tree.leaves(variables["params"]))
    assert (shown["weights"]["provenance"], shown["format"]) == ("random init", "onnx")
    np.save(tmp_path / "x.npy", x)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(onnxruntime.__file__))
    # the loader imports onnxruntime and numpy only, found beside onnxruntime
    subprocess.run([sys.executable, os.path.join(out, "run.py"), str(tmp_path / "x.npy")], check=True, cwd=tmp_path, env=env, timeout=300)
    with lowering.using("xla"):
        want = jax.jit(lambda v, i: model.apply(v, i, train=False))(variables, x)
    with np.load(tmp_path / "outputs.npz") as got:
        assert sorted(got.files) == sorted(want)
        for key in want:
            assert got[key].shape == (2, 48, 40, 3)
            np.testing.assert_allclose(got[key], want[key], atol=1e-4, rtol=1e-4, err_msg=key)


def test_onnx_export_refuses_detectors_and_unlowered_primitives(tmp_path):
    model = jv.create_model("retinanet_resnet50_fpn", num_classes=3)
    item = export.Exportable("retinanet_resnet50_fpn", model, {}, {},
                             {"preprocessing": {"crop_size": 64}})
    with pytest.raises(ValueError, match="retinanet_resnet50_fpn: ONNX export covers "
                                         "classifiers and segmenters.*NMS"):
        export.write(item, "onnx", str(tmp_path / "det"))
    assert not (tmp_path / "det").exists()
    with pytest.raises(onnx_lowering.UnsupportedPrimitive, match="'cumsum' has no ONNX"):
        onnx_lowering.to_onnx(lambda i: jax.numpy.cumsum(i, axis=1), ("batch", 4, 4, 3))


def test_onnx_gathers_take_lookup_and_offset_slice():
    """The three gathers the models trace to (interpolation's take, Swin's relative-position
    table, a slice at a traced offset), at a symbolic batch."""
    table = np.arange(5 * 6 * 3, dtype=np.float32).reshape(5, 6, 3)

    def f(x):  # x: (batch, 5, 6, 3)
        i = jax.numpy.asarray([[0, 4, 2], [1, 1, 3]])
        j = jax.numpy.asarray([[5, 0, 1], [2, 3, 4]])
        start = jax.numpy.argmax(x[0, :, 0, 0] * 0) + 2  # 2, traced
        return {"lookup": x[:, i, j] + jax.numpy.asarray(table)[i, j],
                "take": jax.numpy.take(x, jax.numpy.asarray([4, 0, 0]), axis=2),
                "offset": jax.lax.dynamic_slice_in_dim(x, start, 2, axis=1)}

    proto = onnx_lowering.to_onnx(f, ("batch", 5, 6, 3), ["lookup", "offset", "take"])
    session = onnxruntime.InferenceSession(proto.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    x = np.random.default_rng(3).standard_normal((2, 5, 6, 3)).astype(np.float32)
    want = f(x)
    for name, got in zip(["lookup", "offset", "take"], session.run(None, {"images": x})):
        np.testing.assert_array_equal(got, want[name], err_msg=name)
