"""StableHLO export of the issue's three models, reloaded by the exported loader in a process
without jaxvision, at two batch sizes (sweep: minutes of CPU; the default suite exports a
trained resnet18 in test_reliability.py)."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import jaxvision as jv
from jaxvision.train import export


@pytest.mark.sweep
@pytest.mark.parametrize("name", ["resnet50", "vit_b_16", "deeplabv3_resnet50"])
def test_exported_program_equals_apply_in_a_fresh_process(name, tmp_path):
    model = jv.create_model(name)
    size = jv.model_info(name).crop_size
    variables = model.init(jax.random.key(0), np.zeros((1, size, size, 3), np.float32),
                           train=False)
    item = export.Exportable(name, model, dict(variables), {},
                             {"preprocessing": {"crop_size": size}, "source": "random init"})
    out = export.write(item, "stablehlo", str(tmp_path / "hlo"))
    for b in (1, 2):
        x = np.random.default_rng(b).standard_normal((b, size, size, 3)).astype(np.float32)
        np.save(tmp_path / "x.npy", x)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        subprocess.run([sys.executable, os.path.join(out, "run.py"), str(tmp_path / "x.npy")],
                       check=True, cwd=tmp_path, env=env, timeout=600)
        want = model.apply(variables, x, train=False)
        want = want if isinstance(want, dict) else {"logits": want}
        with np.load(tmp_path / "outputs.npz") as got:
            assert set(got.files) == set(want)
            for key in want:
                np.testing.assert_allclose(got[key], want[key], atol=1e-5, err_msg=f"{name} {b}")
