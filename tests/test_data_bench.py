"""scripts/data_bench.py end to end on a tiny folder: every task, both libraries, and no torch
import unless asked. Timings are its output, never asserted."""
import os
import runpy
import subprocess
import sys

from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--num-images", "4", "--workers", "0", "--batch", "2", "--seg-batch", "2",
        "--det-batch", "2", "--no-decode"]


def _bench(*args):
    code = ("import runpy, sys; sys.argv = ['data_bench.py', *sys.argv[1:]]; "
            f"runpy.run_path({os.path.join(ROOT, 'scripts', 'data_bench.py')!r}, "
            "run_name='__main__'); print('torch imported:', 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, *TINY, *args], capture_output=True,
                         text=True, timeout=600, env={**os.environ, "PYTHONPATH": ROOT})
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_every_task_against_torchvision(capsys, tmp_path):
    bench = runpy.run_path(os.path.join(ROOT, "scripts", "data_bench.py"))
    results = bench["main"]([*TINY, "--torch"])
    assert sorted(results) == sorted(
        (t, 0, lib) for lib in ("jaxvision", "torchvision")
        for t in ("cls-train", "cls-eval", "seg-train", "det-train"))
    # images per second and CPU ms per image, after the first batch
    assert all(rate > 0 and ms >= 0 for [(rate, ms)] in results.values())
    assert "median over rounds" in capsys.readouterr().out
    jpeg = tmp_path / "x.jpg"
    Image.new("RGB", (64, 48), (200, 30, 90)).save(jpeg)
    bench["decode_table"](str(jpeg), n=2)
    assert "PIL draft 1/2    -> 32x24" in capsys.readouterr().out


def test_jaxvision_alone_imports_no_torch():
    out = _bench("--tasks", "cls-train")
    assert "jaxvision    cls-train" in out and "torch imported: False" in out
