"""Knowledge distillation (task "distillation"): the loss against torch's, the teacher as an
argument of the step, its loading and refusals, its val top-1 reported once, and a short run
on shapes that resumes bitwise."""
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torch.nn.functional as F

import jaxvision as jv
from jaxvision.convert import store
from jaxvision.tasks import Classification, Distillation
from jaxvision.tasks.distill import kd_loss
from jaxvision.train import checkpoint, teacher as teachers
from jaxvision.train.loop import train
from jaxvision.train.state import TrainState
from jaxvision.train.step import jit_steps, make_eval_step, make_mesh, make_train_step
from test_engine_run import assert_trees_equal, final_state
from train_configs import tiny_config


def torch_kd(s, t, T):
    s = torch.tensor(np.asarray(s), requires_grad=True)
    loss = F.kl_div(F.log_softmax(s / T, -1), F.softmax(torch.tensor(np.asarray(t)) / T, -1),
                    reduction="batchmean") * T * T
    loss.backward()
    return loss.item(), s.grad.numpy()


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_kd_loss_value_and_gradient_equal_torch(T):
    rng = np.random.default_rng(0)
    s, t = (rng.normal(0, 3, (6, 10)).astype(np.float32) for _ in range(2))
    want, want_grad = torch_kd(s, t, T)
    got, grad = jax.value_and_grad(kd_loss)(jnp.asarray(s), jnp.asarray(t), T)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-4, atol=1e-7)
    # no gradient reaches the teacher
    assert not np.any(np.asarray(jax.grad(kd_loss, 1)(jnp.asarray(s), jnp.asarray(t), T)))


def test_temperature_softens_and_tends_to_logit_matching():
    # fixed logits: T=4 softens both distributions, so their KL falls (2.0 -> 0.21); the T^2
    # factor keeps the loss's scale (3.4), and as T grows T^2 * KL tends to Hinton's logit
    # matching, sum((t - s)^2) / (2 * classes) per example for zero-mean logits
    s = jnp.array([[2.0, 0.0, -2.0]])
    t = jnp.array([[-1.0, 3.0, -2.0]])
    kl = lambda T: float(kd_loss(s, t, T))
    p = lambda x, T: np.exp(np.asarray(x[0]) / T) / np.exp(np.asarray(x[0]) / T).sum()
    by_hand = lambda T: T * T * np.sum(p(t, T) * np.log(p(t, T) / p(s, T)))
    np.testing.assert_allclose([kl(1.0), kl(4.0)], [by_hand(1.0), by_hand(4.0)], rtol=1e-5)
    entropy = lambda T: -np.sum(p(t, T) * np.log(p(t, T)))
    assert entropy(4.0) > entropy(1.0) and kl(4.0) / 16 < kl(1.0) / 5 and kl(4.0) > kl(1.0)
    zs, zt = s - s.mean(), t - t.mean()
    limit = float(jnp.sum((zt - zs) ** 2)) / 6  # 3.0
    gaps = [abs(kl(T) - limit) for T in (4.0, 20.0, 100.0)]  # 0.41, 0.14, 0.03: ~1/T
    assert gaps[0] > gaps[1] > gaps[2] < 0.015 * limit


def test_alpha_mixes_kd_and_cross_entropy():
    rng = np.random.default_rng(1)
    s, t = (jnp.asarray(rng.normal(0, 2, (4, 5)), jnp.float32) for _ in range(2))
    batch = {"label": jnp.array([0, 1, 2, 3]), "teacher_logits": t}
    ce = float(Classification(5).loss(s, {"label": batch["label"]})[0])
    loss = lambda a: float(Distillation(5, temperature=2.0, alpha=a).loss(s, batch)[0])
    np.testing.assert_allclose(loss(0.0), ce, rtol=1e-6)
    np.testing.assert_allclose(loss(1.0), float(kd_loss(s, t, 2.0)), rtol=1e-6)
    np.testing.assert_allclose(loss(0.3), 0.3 * loss(1.0) + 0.7 * ce, rtol=1e-6)


@pytest.fixture(scope="module")
def teacher_dirs(tmp_path_factory):
    """Random resnet18 weights for 3 classes (two seeds) and for 5, as 'convert' directories."""
    root = tmp_path_factory.mktemp("teachers")
    model = jv.create_model("resnet18", num_classes=3)
    init = jax.jit(lambda k: model.init(k, jnp.zeros((1, 32, 32, 3)), train=False))
    a, b = init(jax.random.key(1)), init(jax.random.key(2))
    five = jax.tree.map(np.asarray, a)
    five["params"]["fc"] = {"kernel": np.ones((512, 5), np.float32) / 512,
                            "bias": np.zeros(5, np.float32)}
    out = {"a": store.save(str(root / "a"), "resnet18", a, {"num_classes": 3}),
           "b": store.save(str(root / "b"), "resnet18", b, {"num_classes": 3}),
           "five": store.save(str(root / "five"), "resnet18", five, {"num_classes": 5})}
    return out


def distill_config(pretrained, **train_kw):
    c = tiny_config(**{"steps": 24, **train_kw})
    # its own choice: the module-scoped run and the tests' resumes trace under one lowering
    c.conv_lowering = "xla"
    c.task = "distillation"
    c.teacher.update(name="resnet18", pretrained=str(pretrained))
    c.distill.update(temperature=4.0, alpha=0.5)
    return c


def test_teacher_is_an_argument_of_the_step_and_left_unchanged(teacher_dirs):
    model, tv_a = teachers.load_teacher(distill_config(teacher_dirs["a"]), 3, log=lambda m: None)
    _, tv_b = teachers.load_teacher(distill_config(teacher_dirs["b"]), 3, log=lambda m: None)
    before = jax.tree.map(np.array, tv_a)
    student, variables = model, tv_b  # any resnet18 start will do
    tx = optax.sgd(0.01)
    task = Distillation(3, temperature=4.0, alpha=0.5)
    mesh = make_mesh()
    step, _ = jit_steps(mesh, make_train_step(student, tx, task, teacher=model),
                        make_eval_step(student, task), teacher=True)
    rng = np.random.default_rng(0)
    batch = {"image": rng.normal(0, 1, (4, 32, 32, 3)).astype(np.float32),
             "label": np.array([0, 1, 2, 0])}
    state = lambda: TrainState.create(variables, tx, 0, False)
    a = teachers.bind(step, mesh, tv_a)
    _, m1 = a(state(), batch)
    _, m2 = a(state(), batch)
    _, m3 = teachers.bind(step, mesh, tv_b)(state(), batch)
    assert float(m1["loss_sum"]) == float(m2["loss_sum"]) != float(m3["loss_sum"])
    # other teacher weights, same compiled step: they are an argument, not constants
    assert step._cache_size() == 1
    assert_trees_equal(before, tv_a)
    assert teachers.digest(before) == teachers.digest(tv_a) != teachers.digest(tv_b)


class Interrupt(Exception):
    pass


def interrupt_at(step):
    def log(msg):
        if str(msg).startswith(f"step {step}/"):
            raise Interrupt(msg)
    return log


@pytest.fixture(scope="module")
def straight(tmp_path_factory, teacher_dirs):
    """A distilled run of 24 steps on shapes."""
    workdir = str(tmp_path_factory.mktemp("distilled") / "run")
    train(distill_config(teacher_dirs["a"]), workdir, log=lambda *a: None)
    return workdir


def test_short_run_loss_falls_and_resume_is_bitwise_equal(tmp_path, teacher_dirs, straight):
    resumed = str(tmp_path / "resumed")
    with open(os.path.join(straight, "metrics.jsonl")) as f:
        losses = [r["train/loss"] for r in map(json.loads, f) if "train/loss" in r]
    # every 4 steps: up during the warm-up (1.1, 1.8, 2.0), then down (1.5, 0.95, 0.6)
    assert len(losses) == 6 and np.all(np.isfinite(losses)), losses
    assert losses[-1] < 0.8 * min(losses[:-1]) and losses[-1] < losses[-2] < losses[-3], losses
    # killed at step 12's log line, before its save: the resume reloads the teacher from its
    # directory and continues from step 8
    with pytest.raises(Interrupt):
        train(distill_config(teacher_dirs["a"]), resumed, log=interrupt_at(12))
    assert checkpoint.manager(resumed).latest_step() == 8
    with pytest.raises(checkpoint.WorkdirError, match="teacher="):
        train(distill_config(teacher_dirs["b"]), resumed, log=lambda *a: None)
    train(distill_config(teacher_dirs["a"]), resumed, log=lambda *a: None)
    a, b = final_state(straight), final_state(resumed)
    assert a[0] == b[0] == 24
    assert_trees_equal(a[1], b[1])


def test_teacher_top1_is_reported_once(straight, teacher_dirs):
    from jaxvision.tasks import build_data
    from jaxvision.layers.normalize import normalize

    with open(os.path.join(straight, "metrics.jsonl")) as f:
        evals = [r for r in map(json.loads, f) if "val/top1" in r]
    # evaluated at the end of epoch 1 (step 16) and at step 24; the teacher at the first only
    assert [r["step"] for r in evals] == [16, 24], evals
    assert [("val/teacher_top1" in r) for r in evals] == [True, False]
    # the same number by hand: the teacher's eval-mode argmax over the val split
    c = distill_config(teacher_dirs["a"])
    data = build_data(c.data, "resnet18")
    model, v = jv.create_model("resnet18", pretrained=teacher_dirs["a"])
    fwd = functools.partial(jax.jit(lambda v, x: model.apply(
        v, normalize(x, data.mean, data.std), train=False)), v)
    hits = [(np.asarray(fwd(b["image"])).argmax(-1) == b["label"])[b["valid"]]
            for b in data.eval_loader()]
    hits = np.concatenate(hits)
    assert len(hits) == 40
    assert evals[0]["val/teacher_top1"] == pytest.approx(hits.mean(), abs=1e-6)


def test_teacher_from_a_train_workdir(straight):
    from jaxvision.train.runs import load_run

    model, variables = teachers.load_teacher(distill_config(straight), 3, log=lambda m: None)
    _, _, _, want, _ = load_run(straight, log=lambda m: None)
    assert_trees_equal(variables, want)
    c = distill_config(straight)
    c.teacher.name = "resnet34"
    with pytest.raises(ValueError, match="is a run of 'resnet18', teacher.name is 'resnet34'"):
        teachers.load_teacher(c, 3, log=lambda m: None)


@pytest.mark.parametrize("field,value,match", [
    ("teacher.name", "resnet999", "teacher.name: unknown model 'resnet999'"),
    ("teacher.name", "retinanet_resnet50_fpn", "must be a classifier"),
    ("teacher.name", "", "task='distillation' needs teacher.name"),
    ("distill.temperature", 0.0, "distill.temperature must be a number > 0, got 0.0"),
    ("distill.temperature", -2.0, "distill.temperature must be a number > 0"),
    ("distill.alpha", 1.5, r"distill.alpha must be in \[0, 1\], got 1.5"),
    ("distill.alpha", -0.1, r"distill.alpha must be in \[0, 1\]"),
    ("teacher.pretrained", "", "teacher.pretrained is empty"),
    ("teacher.pretrained", "/nonexistent/t.pth", "/nonexistent/t.pth: no such file"),
    # a teacher is never silently unused
    ("task", "classification", "teacher.name / teacher.pretrained are set but task is "
                               "'classification'"),
    ("model.name", "fcos_resnet50_fpn", "task='distillation' cannot train "
                                        "model.name='fcos_resnet50_fpn'"),
])
def test_bad_distill_values_are_refused_before_the_workdir(tmp_path, field, value, match):
    c = distill_config(tmp_path)
    section, key = field.rsplit(".", 1) if "." in field else (None, field)
    (c[section] if section else c)[key] = value
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        train(c, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run")


def test_teacher_with_other_classes_is_refused_before_anything_is_written(tmp_path,
                                                                         teacher_dirs):
    with pytest.raises(ValueError, match="predicts 5 classes, the student 3"):
        train(distill_config(teacher_dirs["five"]), str(tmp_path / "run"))
    assert os.listdir(tmp_path / "run") == []


def test_teacher_directory_of_another_model_is_refused(teacher_dirs):
    c = distill_config(teacher_dirs["a"])
    c.teacher.name = "resnet34"
    with pytest.raises(ValueError, match=r"teacher.pretrained: .*holds weights for 'resnet18', "
                                         r"not 'resnet34' \(teacher.name\)"):
        teachers.load_teacher(c, 3, log=lambda m: None)


def test_teacher_from_a_torchvision_pth(tmp_path):
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=3).eval()
    torch.save(net.state_dict(), tmp_path / "t.pth")
    model, variables = teachers.load_teacher(distill_config(tmp_path / "t.pth"), 3,
                                             log=lambda m: None)
    x = np.random.default_rng(0).normal(0, 1, (2, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.tensor(x).permute(0, 3, 1, 2)).numpy()
    got = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=r"t.pth does not fit resnet18 with 5 classes"):
        teachers.load_teacher(distill_config(tmp_path / "t.pth"), 5, log=lambda m: None)


def test_predict_temperature_scales_the_logits(tmp_path, straight, capsys):
    from PIL import Image

    from jaxvision.cli import run_command as cli

    image = str(tmp_path / "x.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8)).save(image)

    def probs(*flags):
        assert cli("predict", ["--workdir", straight, "--topk", "3", *flags, image]) == 0
        pairs = capsys.readouterr().out.strip().split(": ", 1)[1].split(", ")
        return {name: float(p) for name, p in (pair.rsplit(" ", 1) for pair in pairs)}

    p1, p4, sharp = probs(), probs("--temperature", "4"), probs("--temperature", "0.25")
    assert probs("--temperature", "1") == p1
    names = sorted(p1)
    # softmax(log p / T) == softmax(logits / T): the log-sum-exp shift cancels
    logp = np.log([p1[n] for n in names])
    for T, got in ((4.0, p4), (0.25, sharp)):
        want = np.exp(logp / T) / np.exp(logp / T).sum()
        np.testing.assert_allclose([got[n] for n in names], want, atol=6e-3)
    entropy = lambda p: -sum(v * np.log(max(v, 1e-9)) for v in p.values())
    assert entropy(sharp) < entropy(p1) < entropy(p4)
    for bad in ("0", "-1", "nan", "x"):
        with pytest.raises(SystemExit) as exit_:  # argparse: usage + one error line
            cli("predict", ["--workdir", straight, "--temperature", bad, image])
        assert exit_.value.code == 2
        assert "argument --temperature: expected a number > 0" in capsys.readouterr().err


def test_predict_temperature_with_a_weights_directory(tmp_path, teacher_dirs):
    from PIL import Image

    from jaxvision.train.runs import predict_weights as predict

    image = str(tmp_path / "x.png")
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 40, 3), np.uint8)).save(image)
    p1, p3 = (dict(predict(teacher_dirs["a"], [image], 3, T)[0]) for T in (1.0, 3.0))
    logp = np.log([p1[n] for n in sorted(p1)])
    want = np.exp(logp / 3) / np.exp(logp / 3).sum()
    np.testing.assert_allclose([p3[n] for n in sorted(p1)], want, rtol=1e-5)
    assert not np.allclose(want, np.exp(logp), atol=1e-3)


def test_shapes_config_arms_differ_only_by_the_teacher(tmp_path):
    from jaxvision.train.config import _flat, check_config, load_config_file

    path = os.path.join(os.path.dirname(__file__), "..", "configs", "distill_shapes.py")
    kd, base = load_config_file(path), load_config_file(path + ":baseline")
    kd.teacher.pretrained = str(tmp_path)  # exists; the README passes runs/quickstart
    check_config(kd)
    check_config(base)
    a, b = _flat(kd.to_dict()), _flat(base.to_dict())
    assert {k for k in a if a[k] != b[k]} == {"task", "teacher.name", "teacher.pretrained"}
    assert kd.distill.temperature == 4.0
    with pytest.raises(ValueError, match="distill_shapes.py:other: expected :distill or "
                                         ":baseline"):
        load_config_file(path + ":other")
