"""Helpers shared by the ConvNeXt, Swin and MaxViT parity tests (on top of tv_parity)."""
from __future__ import annotations

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import torch

import jaxvision as jv
from jaxvision.convert.torchvision import module_path
from jaxvision.train import freeze, optim
from torchvision.models.feature_extraction import create_feature_extractor

from family_checks import frozen
from tv_parity import assert_parity, as_float64, images, max_err, nchw, rel_l2, to_nhwc


def randomize_params_(tmodel: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every tensor torchvision initialises to a constant a random value of realistic size.

    torchvision zeroes biases and heads, sets layer scales to 1e-6 (which switches a ConvNeXt
    block off) and norms to 1/0: a parity test on that compares an identity network.  Layer
    scales become U(0.1, 1), biases N(0, 0.1), norm weights 1 + N(0, 0.1), Swin V2's logit
    scales log(U(5, 20)); weight matrices keep torchvision's init except all-zero ones.
    """
    g = torch.Generator().manual_seed(seed)
    rand = lambda shape: torch.randn(shape, generator=g)
    with torch.no_grad():
        for name, p in tmodel.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "layer_scale":
                p.copy_(torch.rand(p.shape, generator=g) * 0.9 + 0.1)
            elif leaf == "logit_scale":
                p.copy_(torch.log(torch.rand(p.shape, generator=g) * 15 + 5))
            elif leaf == "bias":
                p.copy_(0.1 * rand(p.shape))
            elif p.ndim == 1:  # LayerNorm / BatchNorm weights
                p.copy_(1 + 0.1 * rand(p.shape))
            elif not p.abs().max() > 0:  # a zero-initialised matrix (none today; kept honest)
                p.copy_(rand(p.shape) / math.sqrt(p.shape[-1]))
    return tmodel.eval()


def assert_no_constant_tensor(tmodel):
    for name, p in tmodel.named_parameters():
        if p.numel() > 1:
            assert p.std() > 0, f"{name} is constant: the comparison would prove nothing"


def _stage_maps(model, variables, x, blocks, train=False, rngs=None):
    """Logits and the outputs of the top-level modules ``blocks`` (name -> feature name) from
    one forward of the whole model: one compile where logits plus a features_only model would
    cost two (``features_only`` runs the same modules and stops early; tests check that on
    small twins)."""
    out, state = model.apply(variables, x, train=train, rngs=rngs, mutable=["intermediates"],
                             capture_intermediates=lambda mdl, method: method == "__call__"
                             and len(mdl.scope.path) == 1 and mdl.name in blocks)
    inter = state["intermediates"]
    return out, {feat: inter[mod]["__call__"][0] for mod, feat in blocks.items()}


def check_eval_and_maps(name, tmodel, variables, model, size, nodes, blocks, nhwc=False,
                        tol=1e-4):
    """Eval logits and every stage map at ``size`` against torchvision: ``nodes`` maps torch
    graph nodes to feature names, ``blocks`` our top-level modules to the same names; torch's
    maps are NCHW unless ``nhwc`` (Swin's are NHWC already)."""
    x = images((2, *size, 3), seed=size[0] + size[1])
    conv = (lambda t: t.detach().numpy()) if nhwc else to_nhwc
    fe = create_feature_extractor(tmodel, return_nodes=dict(nodes))
    with torch.no_grad():
        want_logits, want = tmodel(nchw(x)).numpy(), fe(nchw(x))
    truth = {}

    def truth_of(k):
        if not truth:
            t64 = as_float64(tmodel)
            with torch.no_grad():
                truth["logits"] = t64(nchw(x).double()).numpy()
                maps = create_feature_extractor(t64, return_nodes=dict(nodes))(nchw(x).double())
                truth.update({f: conv(v) for f, v in maps.items()})
        return truth[k]

    got_logits, got = jax.jit(lambda v, x: _stage_maps(model, v, x, blocks))(
        variables, jnp.asarray(x))
    assert set(got) == set(want) == set(nodes.values())
    errs = {"logits": assert_parity(f"{name} eval logits at {size}", got_logits, want_logits,
                                    lambda: truth_of("logits"), tol)}
    for k in got:
        errs[k] = assert_parity(f"{name} {k} at {size}", got[k], conv(want[k]),
                                lambda k=k: truth_of(k), tol)
    return errs


def _torch_out_and_grad(tmodel, x, dtype):
    xt = nchw(x).to(dtype).requires_grad_(True)
    out = tmodel(xt)
    (out ** 2).mean().backward()
    return out.detach().numpy(), to_nhwc(xt.grad)


def check_train_and_grad_no_bn(name, tmodel, variables, model, size, tol=1e-4):
    """Train-mode output (stochastic depth and dropout at 0 on both sides) and the input
    gradient of mean(out**2), from one compile, for a model without BatchNorm (no running
    statistics).  The gradient bar: 1e-4 max abs relative to its largest entry, or else
    tv_parity.check_input_grad's: within 4x torch float32's relative L2 distance from float64."""
    import copy

    x = images((2, *size, 3), seed=5)
    tmodel.train()
    try:
        want, want_g = _torch_out_and_grad(tmodel, x, torch.float32)
        t64 = lambda: _torch_out_and_grad(copy.deepcopy(tmodel).double(), x, torch.float64)

        def loss(x):
            out = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(0)})
            return jnp.mean(out ** 2), out

        (_, got), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(jnp.asarray(x))
        cache = {}
        truth = lambda: cache.setdefault("t", t64())
        out_err = assert_parity(f"{name} train output", got, want, lambda: truth()[0], tol)
        # relative to the gradient's scale: input gradients of a mean over 1000 logits are ~1e-6,
        # where an absolute 1e-4 would test nothing
        g_err = max_err(g, want_g) / np.abs(want_g).max()
        if g_err > tol:
            ours, theirs = rel_l2(g, truth()[1]), rel_l2(want_g, truth()[1])
            print(f"BAR {name} input gradient: {g_err:.3g} (max abs over max) > {tol:g}; "
                  f"relative L2 from float64 ours {ours:.3g}, torch float32 {theirs:.3g}")
            assert ours <= 4 * theirs + 1e-7, (
                f"{name} input gradient: {g_err:.3g} (max abs over max) from torch float32; "
                f"relative L2 {ours:.3g} from float64, where torch float32 is {theirs:.3g}")
        return out_err, g_err
    finally:
        tmodel.eval()


def check_bfloat16(tmodel, model, variables, x):
    """bfloat16 compute: float32 parameters, a bfloat16 output within 5% of torch's float32
    logits (8 bits of mantissa through a small net)."""
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
    got = jax.jit(model.apply)(variables, jnp.asarray(x))
    assert got.dtype == jnp.bfloat16
    with torch.no_grad():
        want = tmodel(nchw(x)).numpy()
    err = max_err(got, want)
    assert err <= 0.05 * np.abs(want).max(), err
    return err


def torch_path(key: str) -> str:
    mods, leaf = module_path(key)
    return "/".join(mods) + "/" + leaf


def check_freezing(model_name, model, params, tmodel, stage_of_torch_key, head_of_torch_key):
    """``frozen_stages=k`` freezes exactly the parameters whose torch key lies in the stem or
    stages 1..k (``stage_of_torch_key``: key -> 0, k or None), ``linear_probe`` all but the
    head; both checked against torchvision's own parameter names."""
    ours = set(jax.tree.leaves(freeze.param_paths(params)))
    keys = [k for k, _ in tmodel.named_parameters()]
    # our leaf names differ (kernel/scale); compare on module paths
    mod = lambda p: p.rsplit("/", 1)[0]
    by_mod = {}
    for p in ours:
        by_mod.setdefault(mod(p), set()).add(p)
    assert {mod(torch_path(k)) for k in keys} == set(by_mod), "module paths differ from torch's"
    n = max(s for s in map(stage_of_torch_key, keys) if s is not None)
    for k in range(-1, n + 1):
        want = set()
        for key in keys:
            s = stage_of_torch_key(key)
            if s is not None and s <= k:
                want |= by_mod[mod(torch_path(key))]
        assert frozen(model_name, params, model, frozen_stages=k) == want, k
    head = set()
    for key in keys:
        if head_of_torch_key(key):
            head |= by_mod[mod(torch_path(key))]
    assert head and frozen(model_name, params, model, linear_probe=True) == ours - head
    return n


def check_frozen_leaves_bitwise(model_name, model, variables, x, frozen_stages=1):
    """One AdamW step on a real loss: frozen leaves bitwise unchanged, the others moved."""
    cfg = freeze.default_freeze_config()
    cfg.frozen_stages = frozen_stages
    params = variables["params"]
    trainable = freeze.trainable_mask(params, cfg, model_name, model)
    ocfg = optim.default_optimizer_config()
    ocfg.update(dict(name="adamw", lr=0.01, weight_decay=0.05))
    tx = optim.build_optimizer(ocfg, 0.01, params, trainable)
    rest = {k: v for k, v in variables.items() if k != "params"}

    def loss(p):
        out = model.apply({"params": p, **rest}, x, train=True, rngs={
            "dropout": jax.random.key(0)}, mutable=list(rest))
        return jnp.mean(out[0] ** 2)

    @jax.jit
    def step(p):
        g = jax.grad(loss)(p)
        updates, _ = tx.update(g, tx.init(p), p)
        import optax
        return optax.apply_updates(p, updates)

    new = step(params)
    n_frozen = 0
    for t, a, b in zip(jax.tree.leaves(trainable), jax.tree.leaves(params), jax.tree.leaves(new)):
        if t:
            assert not np.array_equal(np.asarray(a), np.asarray(b))
        else:
            n_frozen += 1
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert n_frozen > 0
    return n_frozen


def count_params_eval_shape(model, size):
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *size, 3))))
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(shapes["params"])))


def meta_param_count(torch_name, **kwargs):
    import torchvision

    with torch.device("meta"):
        model = getattr(torchvision.models, torch_name)(**kwargs)
    return sum(p.numel() for p in model.parameters())


def check_stochastic_depth(tmodel, model, variables, x):
    """Stochastic depth draws from the 'dropout' rng: in train mode one key repeats, two keys
    differ, and both differ from eval; eval is deterministic and equals torch's eval, which
    ignores stochastic depth as well."""
    run = functools.partial(jax.jit(lambda v, key: model.apply(
        v, x, train=True, rngs={"dropout": key}, mutable=[c for c in v if c != "params"])),
        variables)  # an argument, not a constant baked into the program
    first = lambda out: out[0] if isinstance(out, tuple) else out
    a, b, a2 = (np.asarray(first(run(jax.random.key(s)))) for s in (1, 2, 1))
    ev = jax.jit(lambda v: model.apply(v, x, train=False))
    e1, e2 = np.asarray(ev(variables)), np.asarray(ev(variables))
    np.testing.assert_array_equal(a, a2)
    np.testing.assert_array_equal(e1, e2)
    assert max_err(a, b) > 1e-3 and max_err(a, e1) > 1e-3
    with torch.no_grad():
        assert max_err(e1, tmodel(nchw(np.asarray(x))).numpy()) < 1e-4


STAGE_RX = re.compile(r"^features\.(\d+)\.")


def check_train_and_grad_bn(name, tmodel, variables, model, size, tol=1e-4):
    """Train mode with BatchNorm (stochastic depth and dropout at 0 on both sides): output,
    updated running statistics and the input gradient of mean(out**2) (through the batch
    statistics) from one compile.  Bars as tv_parity's check_train / check_input_grad, the
    gradient's relative to its largest entry."""
    import copy

    from tv_parity import _flat

    x = images((4, *size, 3), seed=3)
    before = {k: v.clone() for k, v in tmodel.state_dict().items()}

    def torch_run(t, dtype):
        t.train()
        out, g = _torch_out_and_grad(t, x, dtype)
        t.eval()
        return out, g, {k: v.clone() for k, v in t.state_dict().items()}

    want, want_g, after = torch_run(tmodel, torch.float32)
    tmodel.load_state_dict(before)  # leave the torch model as it was
    cache = {}

    def truth():
        if not cache:
            t64 = copy.deepcopy(tmodel).double()
            out, g, sd = torch_run(t64, torch.float64)
            cache.update(out=out, g=g, stats=_flat(jv.load_pretrained(name, sd, model=model)))
        return cache

    def loss(x):
        out, upd = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(0)},
                               mutable=["batch_stats"])
        return jnp.mean(out ** 2), (out, upd)

    (_, (got, updates)), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(jnp.asarray(x))
    errs = {"train": assert_parity(f"{name} train output", got, want, lambda: truth()["out"],
                                   tol)}
    theirs = _flat(jv.load_pretrained(name, after, model=model))
    errs["stats"] = max(assert_parity(f"{name} running statistic {k}", v, theirs[k],
                                      lambda k=k: truth()["stats"][k], tol)
                        for k, v in _flat(updates).items())
    errs["grad"] = max_err(g, want_g) / np.abs(want_g).max()  # relative, as above
    if errs["grad"] > tol:
        ours, theirs_ = rel_l2(g, truth()["g"]), rel_l2(want_g, truth()["g"])
        print(f"BAR {name} input gradient: {errs['grad']:.3g} (max abs over max) > {tol:g}; "
              f"relative L2 from float64 ours {ours:.3g}, torch float32 {theirs_:.3g}")
        assert ours <= 4 * theirs_ + 1e-7, (
            f"{name} input gradient: {errs['grad']:.3g} (max abs over max) from torch float32; "
            f"relative L2 {ours:.3g} from float64, where torch float32 is {theirs_:.3g}")
    return errs
