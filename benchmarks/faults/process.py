"""Subprocesses of the fault-injection runs: `meanflow` commands in their own session, always killed
and reaped, on a copy of the code taken at start."""

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path


class Proc:
    """A subprocess in its own session, output to a file; `close()` always kills and reaps it."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str], timeout: float) -> None:
        self.log_path = log
        self._log = open(log, "ab")
        self.t0 = time.monotonic()
        self.deadline = self.t0 + timeout
        try:
            self.p = subprocess.Popen([sys.executable, "-m", "meanflow.cli", *args], stdout=self._log,
                                      stderr=subprocess.STDOUT, env=env, start_new_session=True)
        except BaseException:
            self._log.close()
            raise

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def alive(self) -> bool:
        return self.p.poll() is None

    def kill(self) -> bool:
        """SIGKILL its process group if it has not exited; True when the signal went out. (An exited,
        unreaped child keeps its pid, so the group cannot be a recycled one.)"""
        if self.p.poll() is not None:
            return False
        try:
            os.killpg(self.p.pid, signal.SIGKILL)
        except ProcessLookupError:
            return False
        return True

    def wait(self) -> int | None:
        """Exit status, or None after killing it at the deadline."""
        try:
            return self.p.wait(timeout=max(0.0, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.kill()
            self.p.wait()
            return None

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        self.kill()
        self.p.wait()
        self._log.close()

    def __enter__(self) -> "Proc":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_env(code_dir: Path | None) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if code_dir is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(code_dir), *filter(None, [env.get("PYTHONPATH")])])
    return env


def snapshot_code(dest: Path) -> Path:
    """Copy the `meanflow` package into `dest` (the folder to put on PYTHONPATH)."""
    spec = importlib.util.find_spec("meanflow")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("meanflow is not importable")
    src = Path(next(iter(spec.submodule_search_locations)))
    shutil.copytree(src, dest / "meanflow", ignore=shutil.ignore_patterns("__pycache__"))
    return dest
