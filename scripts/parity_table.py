"""Print the parity table (max abs error vs torchvision, eval and train; parameter counts).

    python scripts/parity_table.py resnet18 resnet50 ...

Uses the same checks as the test suite (tests/tv_parity.py); needs torch and torchvision.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import jaxvision as jv  # noqa: E402
from tv_parity import images, max_err, nchw, param_count, torch_param_count, tv_model  # noqa: E402


def row(name, size=(224, 224), train_size=(97, 129)):
    spec = jv.model_info(name)
    tmodel = tv_model(spec.torch_name)
    model = jv.create_model(name)
    variables = jv.load_pretrained(name, tmodel.state_dict(), model=model)
    x = images((2, *size, 3))
    with torch.no_grad():
        want = tmodel(nchw(x))
    eval_err = max_err(model.apply(variables, jnp.asarray(x)), want)
    xt = images((4, *train_size, 3), seed=3)
    tmodel.train()
    with torch.no_grad():
        want = tmodel(nchw(xt))
    want = want[0] if isinstance(want, tuple) else want
    got, _ = model.apply(variables, jnp.asarray(xt), train=True, mutable=["batch_stats"],
                         rngs={"dropout": jax.random.key(0)})
    got = got[0] if isinstance(got, tuple) else got
    train_err = max_err(got, want)
    return (name, eval_err, train_err, param_count(variables), torch_param_count(tmodel),
            float(np.max(np.abs(want.numpy()))))


if __name__ == "__main__":
    print("| model | eval max abs err (224) | train max abs err | params ours | params torchvision | max abs logit |")
    print("|---|---|---|---|---|---|")
    for name in sys.argv[1:]:
        n, e, t, p, q, m = row(name)
        print(f"| {n} | {e:.2e} | {t:.2e} | {p:,} | {q:,} | {m:.2f} |", flush=True)
