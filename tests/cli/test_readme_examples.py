"""The README's command examples run as written, in order, on a fresh clone (issue 24).

Every indented `meanflow ...` line of the README's Commands section (and `$ meanflow ...` transcripts;
`\\` continuations joined, comments dropped) runs in-process, in README order, in an empty folder, with
tiny overrides: 2 training steps of batch 8 (256 points for the 2-D toys), 2-step sample grids, at most 16
samples, 64 pairs, 8 likelihood points. Each must exit with its documented status. The examples that
need what a fresh clone on a CPU does not have are skipped, each for the reason in `SKIP`. The MLP of
the digits and toy-2d jobs is narrowed to 16 units where an example does not choose its network. The 2-D
report at the end of each toy run (4096 samples) measures its distances on 256 of them here.
Afterwards the folder holds only `runs/` and `exports/`: no command wrote into the current directory.
"""

import shlex
from pathlib import Path

from meanflow.cli import main

README = Path(__file__).resolve().parents[2] / "README.md"

SKIP = {  # a text of the command -> why it cannot run here
    "../shared/data/mnist": "MNIST is not in a fresh clone (../shared/data lies outside the repository)",
    "runs/mnist/": "uses a MNIST run (see above)",
    "--preset fashion-mnist --download": "downloads Fashion-MNIST (network)",
    "logging.wandb=true": "W&B: the optional wandb package, and an account for online runs",
    "meanflow encode": "needs ImageNet and the SD-VAE from the Hugging Face Hub",
    "runs/in256/": "an ImageNet-256 run: ImageNet latents, the SD-VAE and a GPU",
    "imagenet/val": "needs the ImageNet validation images and the FID Inception weights (download)",
    "meanflow convert": "needs the official checkpoint model.pth from Google Drive",
    "meanflow-cifar10-official": "needs the converted official checkpoint and CUDA",
    "ref-stats --dataset cifar10": "downloads CIFAR-10 and the FID Inception weights",
    "--ref REF.npz": "REF.npz stands for reference statistics; FID needs the Inception weights (download)",
    "my_images/": "my_images/ stands for the user's images; FID needs the Inception weights (download)",
    "meanflow push": "the Hugging Face Hub (network and credentials)",
}
EXIT = {"meanflow train --lr 1e6": 3}  # the documented non-finite stop
TRAIN = ["--batch-size", "8", "--set", "logging.sample_count=4", "--set", "logging.sample_steps=2",
         "--set", "logging.progress=false", "--set", "logging.tensorboard=false",
         "--set", "training.num_threads=1", "--set", "data.num_points=256"]
NARROW = ["--set", "network.kwargs.hidden=16"]  # the MLP of the digits and toy-2d jobs, 16 wide


def examples() -> list[str]:
    """The example command lines of the README's Commands section, in order (shell-quoted)."""
    section = README.read_text().split("\n## Commands\n", 1)[1].split("\n## ", 1)[0]
    out, current = [], None
    for line in section.splitlines():
        if current is not None:
            current += " " + line.strip()
        elif line.startswith(("    meanflow ", "    $ meanflow ")):
            current = line.strip().removeprefix("$ ")
        else:
            continue
        if current.endswith("\\"):
            current = current[:-1].rstrip()
            continue
        out.append(shlex.join(shlex.split(current, comments=True)))
        current = None
    return out


def _set(argv: list[str], flag: str, value) -> list[str]:
    """`argv` with `flag`'s value replaced by `value` (appended when absent)."""
    if flag in argv:
        i = argv.index(flag)
        return [*argv[:i + 1], str(value), *argv[i + 2:]]
    return [*argv, flag, str(value)]


def tiny(command: str) -> list[str]:
    """The arguments of `main` for an example, made tiny."""
    argv = shlex.split(command)[1:]
    name = argv[0]
    if name == "train" and "--resume" in argv:
        return _set(argv, "--steps", 3)  # one step more than the run it continues
    if name == "train" and "--dry-run" not in argv:
        own_net = any(a.startswith(("network.name=", "network.kwargs=", "network=")) for a in argv)
        extra = TRAIN if own_net else [*TRAIN, *NARROW]
        return [*_set(argv, "--steps", 2), *extra] if command not in EXIT else [*argv, *extra]
    if name == "reflow-pairs":
        return _set(argv, "-n", 64)
    if name == "likelihood":
        return _set(argv, "-n", 8)
    if name == "sample":
        argv = _set(argv, "-n", min(int(argv[argv.index("-n") + 1]), 16)) if "-n" in argv else argv
    return argv


def test_the_readme_has_the_examples_this_test_expects():
    found = examples()
    assert len(found) > 50 and found[0] == "meanflow train"
    assert all(any(key in c for c in found) for key in SKIP), "a SKIP entry matches no example any more"


def test_readme_examples_run_in_order(tmp_path, monkeypatch, capsys):
    import meanflow.evaluation.toy_metrics as toy_metrics

    for fn in ("energy_distance", "sliced_wasserstein"):  # the 2-D report of each toy run, on 256 points
        real = getattr(toy_metrics, fn)
        monkeypatch.setattr(toy_metrics, fn, lambda x, y, *a, _f=real, **k: _f(x[:256], y[:256], *a, **k))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEANFLOW_CACHE", str(tmp_path / "cache"))  # a fresh machine: no data downloaded
    ran = []
    for command in examples():
        if any(key in command for key in SKIP):
            continue
        code = main(tiny(command))
        err = capsys.readouterr().err
        assert code == EXIT.get(command, 0), f"{command}: exit {code}\n{err[-2000:]}"
        ran.append(command)
    assert len(ran) >= 35, ran
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exports", "runs"]
    runs = tmp_path / "runs"
    for named in ("00000-digits-meanflow", "fm/00000-toy-2d-flow_matching", "rf/00002-toy-2d-distill",
                  "rf/pairs2/manifest.json", "sde/00000-toy-2d-score_sde/likelihood-test-n8-seed0.json"):
        assert (runs / named).exists(), named
