"""One persistent XLA compilation cache for the whole test session.

Dozens of tests compile the same tiny resnet18 train and eval steps, in this process, in the
other xdist worker and in the CLI and multi-process subprocesses they start. A cache shared by
all of them, new for each session (a fresh clone's CI run compiles everything once, as a user's
first run does), turns the repeats into cache reads. Programs of any compile time are cached,
not only those over jax's default 1 s (test_engine_step, test_segmentation and test_resnet,
``-n 2``, two runs each: 260 -> 247 s wall, 465 -> 440 user CPU seconds).

It is set up before collection, because jax decides once per process, at its first compilation,
whether a cache is in use. Workers and subprocesses find it through the environment:
``XDG_CACHE_HOME`` (the CLI's default ``config.compile_cache``) and ``JAX_COMPILATION_CACHE_DIR``
(a process that calls ``train`` directly).

Every program of the session draws its random bits through jaxvision's threefry custom call
(``rng_lowering.install()``): bitwise jax's hash (``tests/test_rng_lowering.py`` compares it with
jax's own lowering), without the loop of kernels that XLA:CPU compiles for every draw of every
initialisation and dropout (five init- and dropout-heavy files: 612 -> 423 CPU seconds).

Every test traces the library's CPU default lowering (the exact rewrites), the path users get,
so the parity tests prove the default exact. ``JAXVISION_TEST_LOWERING=xla`` runs the in-process
traces on XLA's own convolution instead (a comparison run; subprocesses and the tests marked
``default_lowering``, which are about the default itself, keep it).
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
    # every program, not only those over jax's default 1 s of compilation: the tests compile
    # thousands of small ones (eager ops, inits, eval steps), many of them in more than one test
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    import jax  # noqa: PLC0415 (in case a plugin imported it before the variable was set)

    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    from jaxvision.layers import rng_lowering  # noqa: PLC0415 (after XDG_CACHE_HOME is set)

    rng_lowering.install()


def pytest_unconfigure(config):
    root = getattr(config, "_jaxvision_cache_owner", None)
    if root:
        shutil.rmtree(root, ignore_errors=True)
        os.environ.pop(ENV, None)


@pytest.fixture(autouse=True)
def conv_lowering(request):
    """The lowering that this test's own traces get by default: the library's, unless
    ``JAXVISION_TEST_LOWERING=xla`` and the test is not about the default itself (marked
    ``default_lowering``)."""
    from jaxvision.layers import lowering  # noqa: PLC0415 (after the cache is configured)

    if (os.environ.get(LOWERING_ENV) != "xla"
            or request.node.get_closest_marker("default_lowering")):
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


def pytest_collection_modifyitems(config, items):
    """The tests marked ``slow`` first: xdist hands tests out in this order, so a minutes-long
    test starts while the other worker still has many short ones to run, instead of being left
    for last with one worker idle."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable
