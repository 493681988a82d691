"""What a training run does around its steps: the finiteness guard before a save, a save that
goes on while the evaluation runs, the TensorBoard writer's import."""
import errno
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.train import checkpoint, guards


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_all_finite_finds_one_bad_value_in_host_and_device_paths(bad):
    tree = {"w": jnp.ones((3, 4)), "b": np.zeros(5, np.float32), "step": jnp.int32(7),
            "nested": [jnp.arange(6.0).reshape(2, 3)]}
    assert guards.all_finite(tree) and bool(guards._all_finite(tree))
    tree["nested"][0] = tree["nested"][0].at[1, 2].set(bad)
    assert not guards.all_finite(tree)
    assert not bool(guards._all_finite(tree))  # the path of arrays on an accelerator
    assert guards.count_nonfinite_leaves(tree) == (1, 3)


def test_tensorboard_writer_is_imported_without_torch(tmp_path):
    code = ("import sys; from jaxvision.train.metrics_log import summary_writer_class; "
            "import numpy as np; w = summary_writer_class()(sys.argv[1]); "
            "w.add_image('x', np.zeros((4, 4, 3), np.uint8), 1, dataformats='HWC'); w.close(); "
            "print(sorted(m for m in ('torch', 'tensorboardX') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                         text=True, check=True).stdout
    assert out.split("\n")[-2] == "['tensorboardX']"
    assert any(p.name.startswith("events") for p in tmp_path.iterdir())


def test_save_without_wait_is_readable_after_finish_and_a_failed_write_is_one_line(tmp_path,
                                                                                 monkeypatch):
    state = {"w": np.arange(4, dtype=np.float32)}
    mgr = checkpoint.manager(str(tmp_path), keep=2, best_metric="val_top1")
    finish = checkpoint.save(mgr, 1, state, b"{}", {"model": "m"}, wait=False)
    finish()
    checkpoint.record_metrics(mgr, 1, {"val_top1": 0.5})
    assert mgr.all_steps() == [1] and mgr.metrics(1) == {"val_top1": 0.5}
    assert checkpoint.save(mgr, 2, state, b"{}", {"model": "m"}) is None  # waited

    def full(*a):  # the background write failing: seen at the wait
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    finish = checkpoint.save(mgr, 3, state, b"{}", {"model": "m"}, wait=False)
    finish()  # the real write ends first
    monkeypatch.setattr(mgr, "wait_until_finished", full)
    with pytest.raises(checkpoint.CheckpointWriteError, match=r"cannot write checkpoint step 3: "
                       r"No space left on device; the previous checkpoint \(step 2\) is intact"):
        finish()
    monkeypatch.undo()
    mgr.close()
