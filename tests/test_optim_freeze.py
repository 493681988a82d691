"""Optimizers against torch.optim on a small problem, and the freezing rules."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torchvision

import jaxvision as jv
from jaxvision.convert.torchvision import module_path
from jaxvision.train import freeze, optim

STEPS = 5


def _problem():
    r = np.random.RandomState(0)
    x, y = r.randn(8, 5).astype(np.float32), r.randn(8, 3).astype(np.float32)
    w, b = r.randn(5, 3).astype(np.float32) * 0.5, r.randn(3).astype(np.float32) * 0.5
    s = (1 + 0.1 * r.randn(5)).astype(np.float32)  # a norm-like "scale"
    return x, y, {"fc": {"kernel": w, "bias": b}, "norm": {"scale": s}}


def _loss(p, x, y):
    return jnp.mean(((x * p["norm"]["scale"]) @ p["fc"]["kernel"] + p["fc"]["bias"] - y) ** 2)


def _torch_run(make_opt, params, x, y, clip=None, exclude=False, frozen=()):
    t = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in
         [("w", params["fc"]["kernel"]), ("b", params["fc"]["bias"]),
          ("s", params["norm"]["scale"])]}
    for k in frozen:
        t[k].requires_grad_(False)
    live = [k for k in t if k not in frozen]
    if exclude:  # torchvision's set_weight_decay: norm params and biases without decay
        groups = [{"params": [t[k] for k in live if k == "w"]},
                  {"params": [t[k] for k in live if k != "w"], "weight_decay": 0.0}]
    else:
        groups = [{"params": [t[k] for k in live]}]
    opt = make_opt(groups)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.7)  # the lr changes every step
    xt, yt = torch.tensor(x), torch.tensor(y)
    for _ in range(STEPS):
        opt.zero_grad()
        loss = (((xt * t["s"]) @ t["w"] + t["b"] - yt) ** 2).mean()
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_([t[k] for k in live], clip)
        opt.step()
        sched.step()
    return {"fc": {"kernel": t["w"].detach().numpy(), "bias": t["b"].detach().numpy()},
            "norm": {"scale": t["s"].detach().numpy()}}


def _jax_run(cfg, params, x, y, trainable=None):
    sched = optax.exponential_decay(cfg.lr, 1, 0.7)
    params = jax.tree.map(jnp.asarray, params)
    tx = optim.build_optimizer(cfg, sched, params, trainable)
    state = tx.init(params)
    for _ in range(STEPS):
        g = jax.grad(_loss)(params, x, y)
        updates, state = tx.update(g, state, params)
        params = optax.apply_updates(params, updates)
    return params, state


def _opt_cfg(**kw):
    c = optim.default_optimizer_config()
    c.update(kw)
    return c


CASES = {
    "sgd_momentum_wd": (dict(name="sgd", lr=0.1, momentum=0.9, weight_decay=0.01),
                        lambda g: torch.optim.SGD(g, lr=0.1, momentum=0.9, weight_decay=0.01)),
    "sgd_nesterov_wd_excl": (dict(name="sgd", lr=0.1, momentum=0.9, nesterov=True,
                                  weight_decay=0.05, wd_exclude_norm_bias=True),
                             lambda g: torch.optim.SGD(g, lr=0.1, momentum=0.9, nesterov=True,
                                                       weight_decay=0.05)),
    "sgd_plain_clip": (dict(name="sgd", lr=0.2, momentum=0.0, weight_decay=0.0,
                            clip_grad_norm=0.5),
                       lambda g: torch.optim.SGD(g, lr=0.2)),
    "adamw": (dict(name="adamw", lr=0.01, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.3),
              lambda g: torch.optim.AdamW(g, lr=0.01, betas=(0.9, 0.98), eps=1e-6,
                                          weight_decay=0.3)),
    "adamw_excl_clip": (dict(name="adamw", lr=0.01, weight_decay=0.3, wd_exclude_norm_bias=True,
                             clip_grad_norm=1.0),
                        lambda g: torch.optim.AdamW(g, lr=0.01, weight_decay=0.3)),
    "rmsprop_momentum_wd": (dict(name="rmsprop", lr=0.01, alpha=0.9, eps=0.0316, momentum=0.9,
                                 weight_decay=1e-3),
                            lambda g: torch.optim.RMSprop(g, lr=0.01, alpha=0.9, eps=0.0316,
                                                          momentum=0.9, weight_decay=1e-3)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_optimizer_matches_torch(case):
    kw, make = CASES[case]
    x, y, p0 = _problem()
    cfg = _opt_cfg(**kw)
    ours, _ = _jax_run(cfg, p0, x, y)
    theirs = _torch_run(make, p0, x, y, clip=cfg.clip_grad_norm, exclude=cfg.wd_exclude_norm_bias)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), ours, theirs)
    assert not np.allclose(ours["fc"]["kernel"], p0["fc"]["kernel"])


@pytest.mark.parametrize("name", ["sgd", "adamw", "rmsprop", "lars"])
def test_frozen_leaves_get_no_update_no_state_no_decay(name):
    x, y, p0 = _problem()
    cfg = _opt_cfg(name=name, lr=0.05, weight_decay=0.1, wd_exclude_norm_bias=True,
                   clip_grad_norm=1.0)
    trainable = {"fc": {"kernel": True, "bias": True}, "norm": {"scale": False}}
    ours, state = _jax_run(cfg, p0, x, y, trainable)
    np.testing.assert_array_equal(ours["norm"]["scale"], p0["norm"]["scale"])
    assert not np.allclose(ours["fc"]["kernel"], p0["fc"]["kernel"])
    n_state = sum(np.size(a) for a in jax.tree.leaves(state) if np.ndim(a) > 0)
    trainable_size = p0["fc"]["kernel"].size + p0["fc"]["bias"].size
    assert n_state % trainable_size == 0 and n_state > 0  # only trainable leaves carry state
    if name != "lars":  # the frozen param's torch twin has requires_grad False
        theirs = _torch_run(_torch_factory(name), p0, x, y, clip=1.0, exclude=True,
                            frozen=("s",))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6),
                     ours, theirs)


def _torch_factory(name):
    return {"sgd": lambda g: torch.optim.SGD(g, lr=0.05, momentum=0.9, weight_decay=0.1),
            "adamw": lambda g: torch.optim.AdamW(g, lr=0.05, weight_decay=0.1),
            "rmsprop": lambda g: torch.optim.RMSprop(g, lr=0.05, momentum=0.9, weight_decay=0.1)
            }[name]


def test_decay_mask_excludes_norms_and_biases():
    params = {"conv": {"kernel": 0, "bias": 0}, "bn": {"scale": 0, "bias": 0},
              "attn": {"in_proj_weight": 0, "in_proj_bias": 0}, "class_token": 0}
    assert optim.decay_mask(params) == {
        "conv": {"kernel": True, "bias": False}, "bn": {"scale": False, "bias": False},
        "attn": {"in_proj_weight": True, "in_proj_bias": False}, "class_token": True}


@pytest.mark.parametrize("kw,match", [
    (dict(name="adam"), "optimizer.name"),
    (dict(clip_grad_norm=-1.0), "optimizer.clip_grad_norm"),
    (dict(name="sgd", momentum=0.0, nesterov=True), "optimizer.nesterov"),
])
def test_bad_optimizer_config_names_the_field(kw, match):
    with pytest.raises(ValueError, match=match):
        optim.build_optimizer(_opt_cfg(**kw), 0.1, _problem()[2])


# ---- freezing -------------------------------------------------------------------------------

def _params(name, size):
    model = jv.create_model(name, num_classes=10)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)),
                                               train=False))
    return shapes["params"]


def _frozen(params, **kw):
    cfg = freeze.default_freeze_config()
    cfg.update(kw)
    mask = freeze.trainable_mask(params, cfg, _frozen.model)
    paths = jax.tree.leaves(freeze.param_paths(params))
    return {p for p, t in zip(paths, jax.tree.leaves(mask)) if not t}


@pytest.fixture(scope="module")
def r18():
    return _params("resnet18", 32)


def test_resnet_frozen_stages_and_probe(r18):
    _frozen.model = "resnet18"
    paths = jax.tree.leaves(freeze.param_paths(r18))
    assert _frozen(r18) == set()
    assert _frozen(r18, frozen_stages=0) == {"conv1/kernel", "bn1/scale", "bn1/bias"}
    two = _frozen(r18, frozen_stages=2)
    assert two == {p for p in paths if p.startswith(("conv1/", "bn1/", "layer1_", "layer2_"))}
    assert _frozen(r18, linear_probe=True) == set(paths) - {"fc/kernel", "fc/bias"}
    assert _frozen(r18, patterns=(r"/bn\d/",)) == {p for p in paths if "/bn1/" in p or "/bn2/" in p}
    with pytest.raises(ValueError, match="frozen_stages=5.*4 stages"):
        _frozen(r18, frozen_stages=5)
    with pytest.raises(ValueError, match="'layer9_' matches no parameter"):
        _frozen(r18, patterns=("layer9_",))
    with pytest.raises(ValueError, match=r"'layer\(' is not a valid regex"):
        _frozen(r18, patterns=("layer(",))


def test_frozen_leaves_unchanged_through_a_resnet_train_update(r18):
    _frozen.model = "resnet18"
    cfg = freeze.default_freeze_config()
    cfg.frozen_stages = 1
    params = jax.tree.map(lambda s: jnp.ones((2,)), r18)  # the tree matters, not the sizes
    trainable = freeze.trainable_mask(params, cfg, "resnet18")
    tx = optim.build_optimizer(_opt_cfg(weight_decay=0.1), 0.1, params, trainable)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    for t, u in zip(jax.tree.leaves(trainable), jax.tree.leaves(updates)):
        assert bool(jnp.all(u == 0)) == (not t)


def test_unknown_family_is_an_error_naming_it(r18, monkeypatch):
    from jaxvision.models.resnet import ResNet

    monkeypatch.delattr(ResNet, "stage_layout")
    _frozen.model = "resnet18"
    with pytest.raises(ValueError, match="family 'resnet'"):
        _frozen(r18, frozen_stages=1)
    assert _frozen(r18, patterns=("fc/",)) == {"fc/kernel", "fc/bias"}  # regexes need no table


def test_vit_stages():
    _frozen.model = "vit_b_16"
    p = _params("vit_b_16", 224)
    paths = jax.tree.leaves(freeze.param_paths(p))
    stem = {"conv_proj/kernel", "conv_proj/bias", "class_token", "encoder/pos_embedding"}
    assert _frozen(p, frozen_stages=0) == stem
    assert _frozen(p, frozen_stages=2) == stem | {
        q for q in paths if "encoder_layer_0/" in q or "encoder_layer_1/" in q}
    assert _frozen(p, linear_probe=True) == {q for q in paths if not q.startswith("heads/")}
    with pytest.raises(ValueError, match="vit_b_16 has 12 stages"):
        _frozen(p, frozen_stages=13)


def _tv_paths(model):
    return {"/".join(module_path(k)[0]) + "/" + module_path(k)[1]: k
            for k, _ in model.named_parameters()}


def _out_shape(model, size):
    """Output (channels, height) of model.features[i] for each i."""
    out, h = {}, torch.zeros(1, 3, size, size)
    with torch.no_grad():
        for i, m in enumerate(model.features):
            h = m(h)
            out[i] = (h.shape[1], h.shape[2])
    return out


@pytest.mark.parametrize("name,family,key", [
    ("mobilenet_v2", "mobilenet", 0), ("mobilenet_v3_large", "mobilenet", 1),
    ("mobilenet_v3_small", "mobilenet", 1), ("vgg11", "vgg", 2), ("vgg16_bn", "vgg", 2),
    ("vgg19", "vgg", 2)])
def test_stage_tables_agree_with_torchvision_modules(name, family, key):
    """The model's stage_layout, checked on torchvision's own module names:
    MobileNetV2 stages are its runs of equal width (mmdetection), MobileNetV3 its runs of equal
    resolution, VGG's the conv blocks between max-pools."""
    if key == 2:  # VGG needs module types only: build it without memory or init time
        with torch.device("meta"):
            tv = getattr(torchvision.models, name)()
        shapes = dict.fromkeys(range(len(tv.features)))
    else:
        tv = getattr(torchvision.models, name)()
        shapes = _out_shape(tv, 64)
    lay = jv.create_model(name).stage_layout
    blocks = sorted(shapes)
    expected, stage, prev = {}, 0, None
    body = blocks[1:-1] if key in (0, 1) else blocks
    for i in body:
        sig = shapes[i][key] if key in (0, 1) else None
        if key == 2:
            expected[i] = stage + 1
            if isinstance(tv.features[i], torch.nn.MaxPool2d):
                stage += 1
            continue
        if sig != prev:
            stage, prev = stage + 1, sig
        expected[i] = stage
    for path in _tv_paths(tv):
        got = lay.stage_of(path)
        if path.startswith("classifier"):
            assert got is None and re.match(lay.head, path)
            continue
        i = int(path.split("/")[0].split("_")[1])
        want = 0 if key in (0, 1) and i == 0 else expected.get(i)
        assert got == want, (path, got, want)


@pytest.mark.parametrize("name,family", [("googlenet", "googlenet"), ("inception_v3", "inception")])
def test_named_stage_tables_cover_torchvision(name, family):
    tv = getattr(torchvision.models, name)(init_weights=False, aux_logits=True)
    lay = jv.create_model(name).stage_layout
    seen = {}
    for path in _tv_paths(tv):
        s = lay.stage_of(path)
        head = bool(re.match(lay.head, path))
        assert (s is None) == head, path  # every param is in the stem, a stage or the head
        seen.setdefault(s, 0)
        seen[s] += 1
    assert set(seen) == {0, 1, 2, 3, None}


def test_norm_eval_override():
    cfg = freeze.default_freeze_config()
    assert freeze.model_overrides(cfg) == {}
    cfg.norm_eval = True
    assert freeze.model_overrides(cfg) == {"norm": "batch_eval"}


@pytest.mark.parametrize("name,size,n_stages", [
    ("mobilenet_v1", 32, 5), ("mobilenet_v2", 32, 7), ("mobilenet_v3_large", 32, 5),
    ("mobilenet_v3_small", 32, 4), ("vgg11_bn", 32, 5), ("googlenet", 64, 3),
    ("inception_v3", 299, 3)])
def test_every_family_freezes_its_jax_params(name, size, n_stages):
    """The tables on jaxvision's own parameter trees: the deepest stage, a linear probe."""
    _frozen.model = name
    p = _params(name, size)
    paths = set(jax.tree.leaves(freeze.param_paths(p)))
    lay = freeze.layout(name)
    head = {q for q in paths if re.match(lay.head, q)}
    assert head and _frozen(p, linear_probe=True) == paths - head
    every = _frozen(p, frozen_stages=n_stages)
    assert every and not every & head
    with pytest.raises(ValueError, match=f"{name} has {n_stages} stages"):
        _frozen(p, frozen_stages=n_stages + 1)


def test_mobilenet_v1_stages_open_at_its_strided_blocks():
    from jaxvision.models.mobilenet import V1_SETTING
    stage, want = 0, {}
    for i, (_, stride) in enumerate(V1_SETTING, 1):
        stage += stride == 2 or i == 1
        want[i] = stage
    lay = freeze.layout("mobilenet_v1")
    assert {i: lay.stage_of(f"features_{i}_0/kernel") for i in want} == want
