"""`meanflow export`: a run's weights as a self-describing folder (config.json, model.safetensors,
samples.png, README.md model card) that `sample`, `eval`, `load_generator` and the diffusers pipeline read."""

from __future__ import annotations

from meanflow.cli.common import add_threads_arg, check_device, pin_threads


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="write a run's weights as a self-describing folder (for sharing, the Hub, diffusers)",
        description="Write one set of a run's weights (its first EMA by default) to a new folder OUT_DIR: "
                    "config.json (method, network, data shape, classes, VAE record), model.safetensors, "
                    "samples.png (a grid drawn with these weights) and README.md (a model card). "
                    "`meanflow sample OUT_DIR`, `meanflow eval --checkpoint OUT_DIR`, "
                    "`meanflow.load_generator(OUT_DIR)` and `meanflow.diffusers.MeanFlowPipeline` read it. "
                    "The folder appears complete or not at all.")
    p.add_argument("path", metavar="RUN", help="run folder (newest checkpoint) or checkpoint file")
    p.add_argument("out", metavar="OUT_DIR", help="folder to create (must not exist, or be empty)")
    p.add_argument("--ema", default=None, metavar="DECAY",
                   help="weights to export: an EMA decay of the run, e.g. 0.9999, or 'raw' (default: the "
                        "run's first EMA)")
    p.add_argument("--vae", default=None, metavar="FOLDER_OR_HUB_ID",
                   help="latent runs: the VAE that decodes samples.png (default: the recorded one; its "
                        "fingerprint must match)")
    p.add_argument("--include-vae", action="store_true",
                   help="latent runs: also store the VAE in OUT_DIR/vae (safetensors), so the export "
                        "decodes without it")
    p.add_argument("--device", default="cpu", help="where samples.png is drawn: cpu, cuda or cuda:N")
    add_threads_arg(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from meanflow.export import export_run
    from meanflow.export.layout import weights_label

    device = check_device(args.device)
    pin_threads(args)
    config = export_run(args.path, args.out, ema=args.ema, vae=args.vae, include_vae=args.include_vae,
                        device=device)
    grid = config.get("sampling", {}).get("grid")
    drawn = f", samples.png ({grid['n']} samples, {grid['steps']} step(s))" if grid else ""
    print(f"exported {config['method']['name']} ({weights_label(config)}, step {config['weights']['step']}) "
          f"-> {args.out}: config.json, model.safetensors, README.md{drawn}")
    return 0
