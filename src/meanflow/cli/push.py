"""`meanflow push`: upload an export (a run is exported to a temporary folder first) to the Hugging Face
Hub, where `meanflow.load_generator("hf://ORG/NAME")` and `MeanFlowPipeline.from_pretrained` find it."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from meanflow.cli.common import add_threads_arg, pin_threads
from meanflow.errors import UserError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "push", help="upload a run or an export to the Hugging Face Hub (needs meanflow[hub])",
        description="Upload an export folder to the model repository NAME on the Hugging Face Hub (created "
                    "if missing); a run folder or checkpoint is exported to a temporary folder first. Only "
                    "the export's files are uploaded. Needs `pip install 'meanflow[hub]'` and credentials "
                    "(`hf auth login` or HF_TOKEN).")
    p.add_argument("path", metavar="RUN_OR_EXPORT", help="export folder, run folder or checkpoint file")
    p.add_argument("--repo", required=True, metavar="NAME", help="Hub model repository, NAME or ORG/NAME")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--ema", default=None, metavar="DECAY",
                   help="runs: the weights to export, an EMA decay or 'raw' (default: the run's first EMA)")
    p.add_argument("--include-vae", action="store_true",
                   help="latent runs: store the VAE in the export (vae/, safetensors)")
    p.add_argument("--message", default=None, help="commit message (default: 'meanflow export')")
    add_threads_arg(p)
    p.set_defaults(func=run)


def _stage_export(path: str, stage: Path, repo: str, args) -> None:
    """`stage` = the export of `path`: a copy of an export folder's files with the card naming `repo`,
    or a fresh export of a run."""
    from meanflow.export import export_run, is_export
    from meanflow.export.card import render_card
    from meanflow.export.layout import CARD, FILES, read_config

    if not is_export(path):
        export_run(path, stage, ema=args.ema, include_vae=args.include_vae, repo=repo)
        return
    if args.ema is not None or args.include_vae:
        raise UserError(f"{path} is an export (one set of weights, fixed at export time): --ema and "
                        "--include-vae are for runs")
    config = read_config(path)
    for name in FILES:
        if (Path(path) / name).is_file() and name != CARD:
            (stage / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(path) / name, stage / name)
    (stage / CARD).write_text(render_card(config, repo), encoding="utf-8")


def run(args) -> int:
    from meanflow.export.hub import check_repo, push_folder, require_credentials, require_hub

    hub = require_hub("meanflow push")
    repo = check_repo(args.repo)
    require_credentials(hub)  # before the export: no work when the push cannot happen
    pin_threads(args)
    if not Path(args.path).exists():
        raise UserError(f"{args.path} not found (give a run folder, checkpoint or export folder)")
    with tempfile.TemporaryDirectory(prefix="meanflow-push-") as tmp:
        stage = Path(tmp) / "export"
        stage.mkdir()
        _stage_export(args.path, stage, repo, args)
        url = push_folder(stage, repo, private=args.private, message=args.message)
        files = sorted(str(p.relative_to(stage)) for p in stage.rglob("*") if p.is_file())
    print(f"pushed {args.path} -> {url} ({', '.join(files)}); load it with "
          f"meanflow.load_generator('hf://{repo}')")
    return 0
