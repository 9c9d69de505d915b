"""The model card (`README.md`) of an export, rendered from its `config.json` alone.

    text = render_card(config, repo="ORG/NAME")   # repo None: the examples load a local folder
"""

from __future__ import annotations

import json

from meanflow.export.layout import weights_label

PIPELINE_TAGS = {True: "image-generation", False: "unconditional-image-generation"}


def _front_matter(config: dict) -> list[str]:
    """Hub metadata: library, tags, pipeline tag (YAML front matter)."""
    data = config["data"]
    tags = list(dict.fromkeys(["meanflow", "one-step-generation", str(config["method"]["name"]),
                               str(data["name"])]))
    if data.get("is_latent"):
        tags.append("latent")
    images = len(data["shape"]) == 3
    lines = ["---", "library_name: meanflow", "tags:", *[f"- {t}" for t in tags]]
    if images:
        lines.append(f"pipeline_tag: {PIPELINE_TAGS[int(data['num_classes']) > 0]}")
    return [*lines, "---", ""]


def _facts(config: dict) -> list[str]:
    """The table: method, network, data, training, weights, sampling."""
    data, weights, sampling = config["data"], config.get("weights", {}), config.get("sampling", {})
    train = config["training_config"].get("training", {})
    classes = int(data["num_classes"])
    cond = f"{classes} classes (class-conditional)" if classes else "unconditional"
    vae = config.get("vae")
    latent = (f"; latents of VAE `{vae.get('name')}` (fingerprint `{vae.get('fingerprint')}`, scale "
              f"{vae.get('scale')})" if vae else "")
    n = config["network"].get("parameters")
    size = ""
    if isinstance(n, int):
        size = f", {n / 1e6:.2f}M parameters" if n >= 1e6 else f", {n:,} parameters"
    kwargs = json.dumps(config["method"]["kwargs"], sort_keys=True)
    rows = [
        ("method", f"`{config['method']['name']}`"),
        ("network", f"`{config['network']['name']}`{size}"),
        ("data", f"`{data['name']}`, samples of shape {list(data['shape'])}, {cond}{latent}"),
        ("training", f"{weights.get('step', '?')} steps, batch {train.get('batch_size', '?')}, "
                     f"lr {train.get('lr', '?')}, seed {train.get('seed', '?')}"),
        ("weights", f"{weights_label(config)} (`model.safetensors`)"),
        ("sampling", f"{sampling.get('default_steps', 1)} step(s) by default (any k with `--steps k` / "
                     "`num_inference_steps=k`)"),
    ]
    return ["| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], "",
            f"Method hyper-parameters: `{kwargs}`", ""]


def _metrics(config: dict) -> list[str]:
    metrics = config.get("metrics") or {}
    lines = ["## Metrics", ""]
    if not metrics:
        return [*lines, "None recorded in the run folder (measure with `meanflow eval`).", ""]
    lines += ["Measured in the run folder (the training run's own report uses its first EMA; `meanflow "
              "eval` files record their settings):", "", "| file | values |", "|---|---|"]
    for name, values in metrics.items():
        text = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
        lines.append(f"| `{name}` | {text} |")
    return [*lines, ""]


def _usage(config: dict, repo: str | None) -> list[str]:
    where = f"hf://{repo}" if repo else "path/to/this/folder"
    classes = int(config["data"]["num_classes"])
    call = "pipe(class_labels=[0, 1, 2, 3], generator=g" if classes else "pipe(batch_size=4, generator=g"
    call += ")" if len(config["data"]["shape"]) == 3 else ', output_type="np")'
    local = "path/to/this/folder"
    grid = config.get("sampling", {}).get("grid", {})
    grid_cmd = (f"`meanflow sample {local} -n {grid['n']} --steps {grid['steps']} --seed {grid['seed']}`"
                if grid else "")
    return [
        "## Use", "",
        "Install: `pip install meanflow` (`meanflow[hub]` for `hf://`, `meanflow[diffusers]` for the "
        "pipeline).", "",
        "Command line (download the folder first for `sample` / `eval`):", "",
        "```bash",
        f"meanflow sample {local} -n 64 --seed 0",
        f"meanflow eval --checkpoint {local} --num-samples 10000 --ref REF.npz",
        "```", "",
        "Python:", "",
        "```python",
        "import meanflow",
        "from meanflow.sampling import generate",
        f'method, net, cfg = meanflow.load_generator("{where}")',
        "x = generate(method, net, 0, 16, seed=0)   # float32 [16, *shape]: `meanflow sample -n 16 --seed 0`",
        "```", "",
        "diffusers:", "",
        "```python",
        "import torch",
        "from meanflow.diffusers import MeanFlowPipeline",
        f'pipe = MeanFlowPipeline.from_pretrained("{where}")',
        "g = torch.Generator().manual_seed(0)   # the samples of `meanflow sample ... --seed 0`",
        f"images = {call}.images",
        "```", "",
        *([f"`samples.png` is {grid_cmd}.", ""] if grid_cmd else []),
    ]


def render_card(config: dict, repo: str | None = None) -> str:
    """The README.md of an export described by `config` (its config.json); `repo` ('ORG/NAME') makes
    the examples load `hf://ORG/NAME`."""
    data = config["data"]
    title = f"{config['method']['name']} on {data['name']}"
    lines = [*_front_matter(config), f"# {title}", "",
             f"A generator trained with the `meanflow` library (method `{config['method']['name']}`), "
             f"exported by `meanflow export` (meanflow {config.get('meanflow_version', '?')}).", ""]
    if len(data["shape"]) == 3 or (len(data["shape"]) == 1 and data["shape"][0] == 2):
        lines += ["![samples](samples.png)", ""]
    lines += _facts(config) + _metrics(config) + _usage(config, repo)
    return "\n".join(lines).rstrip() + "\n"
