"""OUT/report.md of `lct demo`: what was curated, how training went, what the model generates, how it scores.

Images are linked with paths relative to OUT, so the report opens in any markdown viewer
(VS Code, GitHub, `grip`) from the OUT directory.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipelines.markdown import md_text


def _rel(path: Path, root: Path) -> str:
    return str(path.relative_to(root))


def _image(path: Path, root: Path, alt: str) -> str:
    return f"![{alt}]({_rel(path, root)})" if path.is_file() else f"_({alt}: not written)_"


def _url(address: str | None) -> str:
    if not address:
        return "n/a"
    return address if address.startswith("http") else f"http://{address}"


def _last_loss(run: Path) -> str:
    from training.metrics import read_metrics

    rows = read_metrics(run)
    if not rows:
        return "n/a"
    first, last = rows[0]["loss"], rows[-1]["loss"]
    tail = rows[-max(1, len(rows) // 10):]
    return f"{first:.4f} at step {rows[0]['step']} -> {last:.4f} at step {rows[-1]['step']} (mean of the last {len(tail)}: {sum(r['loss'] for r in tail) / len(tail):.4f})"


def dataset_section(root: Path) -> list[str]:
    from dataprep.sheets import write_sheets

    dataset = root / "dataset"
    info = json.loads((dataset / "dataset.json").read_text())
    counts = info.get("counts", {})
    films = counts.get("films", {})
    sheets = write_sheets(dataset, 3)
    lines = [
        "## 1. Curated dataset", "",
        f"`{_rel(dataset, root)}`: {films.get('ok', 0)} films ok, {films.get('failed', 0)} failed, "
        f"{films.get('skipped', 0)} skipped; {counts.get('shots', 0)} shots in {counts.get('scenes', 0)} scenes, "
        f"{counts.get('shards', 0)} shards. Inspect it with `lct inspect {dataset}`.", "",
    ]
    lines += truth_lines(dataset)
    lines += [_image(p, root, f"scene {p.stem}") for p in sheets] + [""]
    return lines


def truth_lines(dataset: Path) -> list[str]:
    """Shot F1 and scene ARI against the synthetic ground truth (dataprep.truth); nothing without truth files."""
    from dataprep.truth import score_dataset

    scores = score_dataset(dataset)
    return [] if scores is None else truth_table(scores)


def truth_table(scores: dict) -> list[str]:
    """The report's lines for dataprep.truth.score_dataset's scores; film names are escaped (they come from data)."""
    lines = [
        f"Against the ground truth of the {scores['films']} synthetic films (`*.truth.json`): "
        f"**shot F1 {scores['shot_f1']:.3f}** (precision {scores['shot_precision']:.3f}, recall "
        f"{scores['shot_recall']:.3f}; hard cuts, ±{scores['tolerance_frames']} frame), "
        f"**scene ARI {scores['scene_ari']:.3f}** (1 = the true scenes exactly); "
        f"{scores['scenes']} scenes curated where the truth has {scores['true_scenes']}.", "",
        "| film | cuts found / true | shot F1 | scenes curated / true | scene ARI |", "|---|---|---|---|---|",
    ]
    for f in scores["per_film"]:
        lines.append(f"| {md_text(f['film'])} | {f['cuts']} / {f['true_cuts']} | {f['shot_f1']:.3f} | "
                     f"{f['scenes']} / {f['true_scenes']} | {f['scene_ari']:.3f} |")
    return lines + [""]


def training_section(root: Path) -> list[str]:
    lines = ["## 2. Training", ""]
    for name, title in (("run", "bidirectional"), ("run-sync", "the ablation: synchronous timesteps"),
                        ("run-causal", "context-causal fine-tune")):
        run = root / name
        if not (run / "config.yaml").is_file():
            continue
        samples = sorted((run / "samples").glob("step-*/sheet.png"))
        lines += [
            f"### {title} (`{name}/`)", "",
            f"Loss: {_last_loss(run)}. TensorBoard: `tensorboard --logdir {run / 'tb'}`.", "",
            _image(run / "loss.png", root, f"loss curve of {name}"), "",
            _image(run / "training.png", root, f"training curves of {name}: lr, grad norm, loss per timestep, throughput"), "",
        ]
        if samples:
            lines += [f"Validation sample at {samples[-1].parent.name} (generated, then the real scene):", "",
                      _image(samples[-1], root, "generated validation scene"),
                      _image(samples[-1].with_name("real.png"), root, "real validation scene"), ""]
    return lines


def generation_section(root: Path, generations: dict) -> list[str]:
    lines = ["## 3. Generated scenes", "",
             f"From the prompts of a held-out scene (`{_rel(root / 'generate' / 'scene.yaml', root)}`); "
             "conditioned mode also gets its first frame as a clean condition.", ""]
    for mode, record in generations.items():
        out = root / "generate" / mode
        seconds = record.get("seconds")
        timing = f", {seconds:.2f} s" if isinstance(seconds, (int, float)) else ""
        lines += [f"### {mode}{timing}", "", _image(out / "sheet.png", root, f"{mode} contact sheet"),
                  f"Film with cuts: `{_rel(out / 'scene.mp4', root)}`", ""]
    return lines


def write_report(root: Path, generations: dict, evaluation: dict, dashboard: str | None, prefect_ui: str | None) -> Path:
    lines = ["# lct demo report", "",
             "Synthetic films -> curated on Ray -> LCT trained with DeepSpeed on Ray Train -> generated "
             "and evaluated. Everything here ran on this machine's CPUs.", ""]
    lines += dataset_section(root) + training_section(root) + generation_section(root, generations)
    lines += ["## 4. Evaluation", ""]
    eval_md = root / "eval" / "eval.md"
    body = (eval_md.read_text().replace("\n## ", "\n#### ").replace("\n# ", "\n### ")
            if eval_md.is_file() else "_(not run)_")
    lines += [body[2:] if body.startswith("# ") else body, ""]
    lines += [
        "## 5. Where to look", "",
        f"- Ray dashboard (while a command runs): {_url(dashboard)}",
        f"- Prefect UI: {prefect_ui or 'a temporary server lived only during the run; start one with `prefect server start` and set PREFECT_API_URL to keep flow-run history'}",
        "- Flow runs, artifacts (per-film table, summaries, loss curves): the Prefect UI above.",
        f"- Re-run `lct demo --out {root}` to resume; stages already done are skipped.", "",
    ]
    path = root / "report.md"
    path.write_text("\n".join(lines))
    return path
