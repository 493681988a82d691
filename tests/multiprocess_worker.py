"""One process of a multi-process run (tests/test_multiprocess.py launches 2 on 127.0.0.1).

    python multiprocess_worker.py MODE NPROC INDEX PORT OUT WORKDIR STEPS

MODE "step": 3 train steps on fixed global batches of 16, this process feeding its rows; the
final params go to OUT (process 0).  MODE "train": the training loop on a shared WORKDIR.
"""
import os
import sys

import jax

mode, nproc, index, port, out, workdir, steps = sys.argv[1:8]
nproc, index = int(nproc), int(index)
if nproc > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=nproc,
                               process_id=index)

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_configs import tiny_config  # noqa: E402


def step_mode():
    import jaxvision as jv
    from jaxvision.layers import rng_lowering
    from jaxvision.train import optim
    from jaxvision.train.state import TrainState
    from jaxvision.train.step import jit_steps, make_eval_step, make_mesh, make_train_step, shard_batch

    c = tiny_config()
    model = jv.create_model("resnet18", num_classes=3)
    variables = rng_lowering.call(
        jax.jit(lambda k: model.init(k, jax.numpy.zeros((1, 32, 32, 3)))), jax.random.key(0))
    schedule = optim.build_schedule(c.schedule, c.optimizer.lr, 4, 3)
    tx = optim.build_optimizer(c.optimizer, schedule, variables["params"], None)
    state = TrainState.create(variables, tx, 0, False)
    mesh = make_mesh()
    train_step, _ = jit_steps(mesh, make_train_step(model, tx, 3), make_eval_step(model, 3))
    state = jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    rng = np.random.default_rng(0)
    rows = slice(index * 16 // nproc, (index + 1) * 16 // nproc)
    for _ in range(3):
        batch = {"image": rng.normal(size=(16, 32, 32, 3)).astype(np.float32),
                 "label": rng.integers(0, 3, 16).astype(np.int32)}
        state, _ = train_step(state, shard_batch(mesh, {k: v[rows] for k, v in batch.items()}))
    params = jax.device_get(state.params)
    if index == 0:
        flat = {jax.tree_util.keystr(p): np.asarray(v)
                for p, v in jax.tree_util.tree_leaves_with_path(params)}
        np.savez(out, **flat)


def train_mode():
    from jaxvision.train.loop import train

    c = tiny_config(steps=int(steps), log_every=2)
    c.checkpoint.save_every_steps = 4
    print(train(c, workdir, log=lambda *a: print(*a, flush=True)), flush=True)


{"step": step_mode, "train": train_mode}[mode]()
