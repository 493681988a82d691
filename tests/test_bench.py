"""`jaxvision bench` end to end on a tiny case, and the persistent compilation cache across
processes. Timings are the bench's output, never asserted."""
import json
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code, *args, env=None):
    env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu", **(env or {})}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_bench_runs_both_sides_and_imports_no_data_stack(tmp_path):
    out = tmp_path / "bench.json"
    stdout = _python("""
        import sys
        from jaxvision.cli import main
        rc = main(["bench", "--model", "resnet18", "--image-size", "32", "--batch", "2",
                   "--num-classes", "4", "--steps", "1", "--warmup", "0", "--torch", "eager",
                   "--rounds", "2",
                   "--json", sys.argv[1]])
        assert rc == 0
        data_stack = ("grain", "tensorflow_datasets", "ml_collections", "tensorflow")
        print("IMPORTED", sorted(m for m in sys.modules if m.split(".")[0] in data_stack))
        """, str(out))
    assert "IMPORTED []" in stdout, stdout
    res = json.loads(out.read_text())
    jax_side, torch_side = res["jax"], res["torch"]["eager"]
    for side in (jax_side, torch_side):
        assert side["train"] > 0 and side["infer"] > 0
    assert jax_side["compile_s"] > 0 and jax_side["train_gflop_per_step"] > 0
    ratio = res["ratio"]["eager"]
    for what in ("train", "infer"):  # the sides took turns: a ratio per round, their median
        j, t = jax_side[f"{what}_rounds"], torch_side[f"{what}_rounds"]
        assert len(j) == len(t) == 2 and res["config"]["rounds"] == 2
        assert abs(ratio[what] - (j[0] / t[0] + j[1] / t[1]) / 2) < 1e-9
        # the median round's time: of two, their mean, i.e. the harmonic mean of the rates
        assert abs(jax_side[what] - 2 / (1 / j[0] + 1 / j[1])) < 1e-6 * jax_side[what]
    assert "train step" in stdout and "(" in stdout  # the printed table with its ratios
    assert res["config"]["lowering"] == "auto" and "lowering auto" in stdout  # the bench's default
    # both sides under the malloc settings jaxvision's training runs with, and the report says so
    assert res["config"]["freed_memory_kept"] is True and "keeps freed memory" in stdout


def test_second_process_hits_the_compile_cache(tmp_path):
    cache = tmp_path / "xla"
    code = """
        import sys
        import jax, jax.numpy as jnp
        from jaxvision.layers import Conv2d
        from jaxvision.train import compile_cache
        hits = []
        jax.monitoring.register_event_listener(
            lambda name, **kw: hits.append(name) if name.endswith("/cache_hits") else None)
        compile_cache.enable(sys.argv[1])
        model = Conv2d(4, 3, padding=1, name="conv")
        x = jnp.ones((1, 6, 6, 2))
        v = jax.jit(model.init)(jax.random.key(0), x)
        jax.block_until_ready(jax.jit(model.apply)(v, x))
        print("HITS", len(hits))
        """
    first = _python(code, str(cache))
    entries = sorted(os.listdir(cache))
    assert "HITS 0" in first and entries, (first, entries)
    second = _python(code, str(cache))
    assert "HITS 0" not in second, second
    assert sorted(os.listdir(cache)) == entries  # nothing compiled anew


def test_config_default_and_off():
    from jaxvision.train import compile_cache
    from jaxvision.train.defaults import default_config

    assert default_config().compile_cache == compile_cache.default_dir()
    assert compile_cache.enable("") is None
