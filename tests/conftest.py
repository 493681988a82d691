"""One persistent XLA compilation cache for the whole test session.

Dozens of tests compile the same tiny resnet18 train and eval steps, in this process, in the
other xdist worker and in the CLI and multi-process subprocesses they start. A cache shared by
all of them, new for each session (a fresh clone's CI run compiles everything once, as a user's
first run does), turns the repeats into cache reads.

It is set up before collection, because jax decides once per process, at its first compilation,
whether a cache is in use. Workers and subprocesses find it through the environment:
``XDG_CACHE_HOME`` (the CLI's default ``config.compile_cache``) and ``JAX_COMPILATION_CACHE_DIR``
(a process that calls ``train`` directly).

The convolutions a test traces itself lower by XLA's own op (``layers.lowering.using("xla")``)
unless the test is marked ``default_lowering``: the library's CPU default, the exact rewrites,
makes models' graphs compile 1.3-2x slower (resnet50's gradient at 64 px: 13 -> 17 s), and a
parity test's point is the model's sums. The rewrites' own tests, the engine's (whose configs
choose for themselves) and one parity test per rewrite on a representative family are marked;
``JAXVISION_TEST_LOWERING=auto`` runs every test on the default (the whole-suite check).
"""
import os
import shutil
import tempfile

import pytest

ENV = "JAXVISION_TEST_CACHE_ROOT"
LOWERING_ENV = "JAXVISION_TEST_LOWERING"


def pytest_configure(config):
    if os.environ.get(ENV):  # an xdist worker: the controller made it
        root = os.environ[ENV]
    else:
        root = tempfile.mkdtemp(prefix="jaxvision-test-cache-")
        os.environ[ENV] = root
        config._jaxvision_cache_owner = root
    os.environ["XDG_CACHE_HOME"] = root
    path = os.path.join(root, "jaxvision", "xla")
    os.makedirs(path, exist_ok=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = path
    import jax  # noqa: PLC0415 (in case a plugin imported it before the variable was set)

    jax.config.update("jax_compilation_cache_dir", path)


def pytest_unconfigure(config):
    root = getattr(config, "_jaxvision_cache_owner", None)
    if root:
        shutil.rmtree(root, ignore_errors=True)
        os.environ.pop(ENV, None)


@pytest.fixture(autouse=True)
def conv_lowering(request):
    """The lowering that this test's own traces get by default: "xla" or the library's."""
    from jaxvision.layers import lowering  # noqa: PLC0415 (after the cache is configured)

    if (request.node.get_closest_marker("default_lowering")
            or os.environ.get(LOWERING_ENV) == "auto"):
        yield lowering.DEFAULT_MODE
        return
    with lowering.using("xla"):
        yield "xla"


@pytest.fixture
def conv_choices(monkeypatch):
    """The lowering chosen for each convolution traced during the test, in order."""
    from jaxvision.layers import lowering  # noqa: PLC0415

    seen, choose = [], lowering.choose

    def spy(*args, **kwargs):
        seen.append(choose(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(lowering, "choose", spy)
    return seen
