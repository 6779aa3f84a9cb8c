"""The shape of the package: small modules, no import cycles, the prior chosen by name in one place, evaluation and
generation independent of the training loop, and a new prior plugged in with one entry."""

from __future__ import annotations

import ast
import dataclasses
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from pvpp import train
from pvpp.model import ModelConfig
from pvpp.priors import bernoulli, build
from pvpp.priors.base import Prior
from pvpp.priors.posteriors import BernoulliPosterior

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "pvpp"
MAX_LINES = 500
# Function-level imports allowed, each with its reason written beside it in the code.
DEFERRED_IMPORTS = {"pvpp/bench/train.py"}  # the CPU device count is set before jax starts, in a worker


def _modules() -> dict[str, pathlib.Path]:
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def test_no_module_is_longer_than_500_lines():
    long = {
        str(p.relative_to(PACKAGE.parent)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, long


def test_the_package_has_no_import_cycle():
    """Module-level imports between pvpp modules form no cycle (`from pkg import sub` depends on the submodule)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.parse(path.read_text()).body:  # module level only
            if isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names if alias.name in modules)
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pvpp"):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    deps.add(sub if sub in modules else node.module)
        graph[name] = deps - {name}

    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                cycles.append(stack[stack.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, cycles


def test_imports_sit_at_the_top_of_modules():
    found = []
    for path in PACKAGE.rglob("*.py"):
        rel = str(path.relative_to(PACKAGE.parent))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if (
                    any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.walk(node))
                    and rel not in DEFERRED_IMPORTS
                ):
                    found.append(f"{rel}:{node.lineno} {node.name}")
    assert not found, found


def test_the_prior_name_is_read_in_one_function_only():
    pattern = re.compile(r"prior *(==|!=| in )")
    hits = [
        f"{p.relative_to(PACKAGE.parent)}:{i}"
        for p in PACKAGE.rglob("*.py")
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert len(hits) == 1 and hits[0].startswith("pvpp/priors/build.py:"), hits


def _module_imports() -> dict[str, set[str]]:
    """Module -> the pvpp modules its module-level imports load (a package's __init__ included)."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.parse(path.read_text()).body:
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pvpp"):
                targets = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
            for target in targets:
                parts = target.split(".")
                deps.update(".".join(parts[:n]) for n in range(1, len(parts) + 1) if ".".join(parts[:n]) in modules)
        graph[name] = deps - {name}
    return graph


@pytest.mark.parametrize("package", ["pvpp.evaluation", "pvpp.generation", "pvpp.runs", "pvpp.parallel", "pvpp.model"])
def test_the_jobs_below_training_never_import_it(package):
    """Parsed imports, followed transitively: evaluation, generation, the run files, the device layer and the model
    reach nothing in pvpp.training (nor the training facade pvpp.train)."""
    graph = _module_imports()
    assert any(name.startswith(package + ".") for name in graph), package
    for start in [name for name in graph if name == package or name.startswith(package + ".")]:
        seen, todo = set(), [start]
        while todo:
            for dep in graph.get(todo.pop(), ()):
                if dep not in seen:
                    seen.add(dep)
                    todo.append(dep)
        reached = sorted(m for m in seen if m == "pvpp.train" or m.startswith("pvpp.training"))
        assert not reached, f"{start} imports {reached}"


def test_evaluation_and_generation_do_not_import_the_training_loop():
    code = (
        "import sys; import pvpp.evaluation.evaluate, pvpp.generation.sample, pvpp.runs.workdir, pvpp.experiments.evaluate, "
        "pvpp.experiments.sample; loaded = [m for m in ('pvpp.training.loop', 'pvpp.train', "
        "'pvpp.training.periodic_eval') if m in sys.modules]; print(loaded); assert not loaded"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


@dataclasses.dataclass(frozen=True)
class FixedBernoulliPrior(Prior):
    """A prior written outside the package: factorial Bernoulli(1/2), no parameters (a new file's worth)."""

    size: int

    name = "fixed_bernoulli"

    @classmethod
    def from_config(cls, config):
        return cls(config.num_latents)

    @property
    def num_latents(self):
        return self.size

    @property
    def posterior(self):
        return BernoulliPosterior(0.5)

    def log_prob_unnormalized(self, prior_params, z):
        return bernoulli.log_prob(z, jnp.zeros((self.size,)))

    def relaxed_kl(self, prior_params, posterior, latents, *, negative_phase=None, log_partition=None):
        log_q = self.posterior.log_prob(latents, jax.lax.stop_gradient(posterior))
        return log_q - self.log_prob_unnormalized(None, latents), {}

    def sample(self, prior_params, key, num, *, num_sweeps=1):
        return bernoulli.sample(key, jnp.zeros((self.size,)), (num,))


def test_a_new_prior_is_one_class_and_one_entry_where_priors_are_built(monkeypatch):
    monkeypatch.setitem(build.PRIOR_TYPES, "fixed_bernoulli", FixedBernoulliPrior)
    config = ModelConfig(
        image_shape=(8, 8, 1),
        nr_resnet=1,
        nr_filters=4,
        num_concat_latents=6,
        prior="fixed_bernoulli",
        encoder_filters=4,
        latent_map_channels=2,
    )
    assert config.num_latents == 6 and config.num_posterior_params == 6
    devices = tuple(jax.local_devices()[:1])
    fns = train.step_functions(config, train.TrainConfig(batch_size=4, num_steps=1, num_devices=1), devices)
    state = jax.eval_shape(fns.init, jax.random.key(0), jax.ShapeDtypeStruct((4, 8, 8, 1), jnp.uint8))
    assert state.chains is None and "z1_encoder" in state.params
    replicated = jax.tree.map(lambda s: jax.ShapeDtypeStruct((1,) + s.shape, s.dtype), state)
    _, metrics = jax.eval_shape(fns.train, replicated, jax.ShapeDtypeStruct((1, 4, 8, 8, 1), jnp.uint8))
    assert {"loss", "kl", "reconstruction"} <= set(metrics)
    with pytest.raises(ValueError, match="prior must be one of"):
        ModelConfig(prior="vamp")


def test_no_test_module_imports_another():
    """Shared test code lives in tests/helpers.py and tests/conftest.py, never in a test module."""
    found = []
    for path in sorted((PACKAGE.parent / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            )
            found += [f"{path.name}: {name}" for name in names if name.split(".")[0].startswith("test_")]
    assert not found, found
