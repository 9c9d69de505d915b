"""The README's first command needs only what `pip install -e .` installs.

CI installs the test extras (matplotlib, pytest, ...), which could hide an undeclared import. These
tests run the CLI in a subprocess whose imports are limited to the standard library, meanflow, and the
distributions pyproject.toml declares plus everything they require: any other module (matplotlib,
tensorboard, ...) is reported as not installed, exactly as in a clean environment. `.ci/fresh_env.sh`
additionally runs the full default job in a real fresh virtual environment.
"""

import importlib.metadata as md
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _dist(req: str) -> str:
    return re.split(r"[<>=!~ ;\[]", req, maxsplit=1)[0].strip().lower().replace("_", "-")


def declared() -> list[str]:
    """The distributions of `[project] dependencies` in pyproject.toml (read without tomllib, which
    Python 3.10 lacks)."""
    text = (ROOT / "pyproject.toml").read_text()
    block = re.search(r"^dependencies = \[(.*?)^\]", text, flags=re.S | re.M)
    assert block, "no [project] dependencies list in pyproject.toml"
    return [_dist(r) for r in re.findall(r'"([^"]+)"', block.group(1))]


def allowed_modules() -> set[str]:
    """Top-level modules of the declared distributions and of everything they require (no extras)."""
    seen: set[str] = set()
    todo = declared()
    while todo:
        name = _dist(todo.pop())
        if not name or name in seen:
            continue
        seen.add(name)
        try:
            todo += [r for r in (md.requires(name) or []) if "extra ==" not in r]
        except md.PackageNotFoundError:
            continue
    return {m for m, dists in md.packages_distributions().items()
            if any(_dist(d) in seen for d in dists)} | {"meanflow"}


GUARD = textwrap.dedent("""
    import importlib.abc, importlib.machinery, json, sys
    ALLOWED = set(json.loads(sys.argv[1])); LOG = sys.argv[2]
    class Missing(importlib.abc.Loader):
        def create_module(self, spec):
            raise ModuleNotFoundError(f"No module named {spec.name!r}", name=spec.name)
        def exec_module(self, module):
            pass
    class Clean(importlib.abc.MetaPathFinder):
        # Installed modules outside ALLOWED fail to import as if absent (and are logged); modules that
        # are not installed at all take the normal path (find_spec None).
        def find_spec(self, name, path=None, target=None):
            top = name.partition(".")[0]
            if top in sys.stdlib_module_names or top in ALLOWED or top.startswith("_"):
                return None
            if importlib.machinery.PathFinder.find_spec(top) is None:
                return None
            with open(LOG, "a") as f:
                f.write(top + "\\n")
            return importlib.machinery.ModuleSpec(name, Missing())
    sys.meta_path.insert(0, Clean())
    sys.argv = ["meanflow", *sys.argv[3:]]
    from meanflow.cli import main
    sys.exit(main())
""")


def run_clean(tmp_path, *args):
    log = tmp_path / "blocked.txt"
    allowed = json.dumps(sorted(allowed_modules()))
    proc = subprocess.run([sys.executable, "-c", GUARD, allowed, str(log), *args],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)
    blocked = set(log.read_text().split()) if log.exists() else set()
    return proc, blocked


def test_declared_dependencies_are_installed():
    for name in declared():
        md.version(name)  # raises when pyproject names a distribution that does not exist


@pytest.mark.slow
def test_default_job_runs_with_declared_dependencies_only(tmp_path):
    proc, blocked = run_clean(tmp_path, "train", "--steps", "40", "--set", "logging.progress=false",
                              "--set", "logging.sample_every=20")
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = tmp_path / "runs" / "00000-digits-meanflow"
    assert (run / "samples.png").is_file() and (run / "checkpoints" / "ckpt-0000040.safetensors").is_file()
    assert "matplotlib" not in blocked  # the loss curve is drawn with Pillow
    assert proc.stdout.strip().splitlines()[-1].startswith("done: 40 steps.")
    assert (run / "loss.png").is_file() and "loss curve:" in proc.stdout

    proc, _ = run_clean(tmp_path, "sample", str(run), "-n", "8", "--out", str(tmp_path / "s"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "s.png").is_file() and (tmp_path / "s.npz").is_file()


@pytest.mark.slow
def test_toy_job_writes_its_metrics_without_matplotlib(tmp_path):
    proc, _ = run_clean(tmp_path, "train", "--preset", "toy-2d", "--steps", "20",
                        "--set", "logging.progress=false", "--set", "network.kwargs={hidden: 32, depth: 2}",
                        "--set", "data.num_points=512")
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = next((tmp_path / "runs").iterdir())
    assert json.loads((run / "metrics.json").read_text())["sliced_wasserstein"] > 0
    assert (run / "samples.png").is_file()
