"""The model card of a trained image model (Markdown; Mitchell et al., "Model Cards for Model
Reporting", FAT* 2019): intended use, data, licence, training, validation figures, limits."""

from __future__ import annotations

from typing import Any


def model_card(recipe: Any, report: dict[str, Any], raw: dict[str, Any], temperature: float,
               setup: dict[str, Any], metrics: dict[str, float], plots: list[str]) -> str:
    per_class = "\n".join(
        f"| {label} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {v['support']} |"
        for label, v in report["per_class"].items())
    matrix = report["confusion_matrix"]["matrix"]
    cm = "\n".join(f"| {label} | " + " | ".join(str(n) for n in row) + " |"
                   for label, row in zip(recipe.labels, matrix, strict=True))
    auc = report["macro_auc"]
    spec = recipe.spec
    norm = spec.normalisation
    notes = "".join(f"- {n}\n" for n in recipe.notes)
    images = "\n".join(f"![{p}]({p})" for p in plots)
    return f"""# {recipe.name} {recipe.version}

Classifies a single 2-D image into {", ".join(f"`{lab}`" for lab in recipe.labels)}.
Trained from scratch in medcloud (`medcloud ai train --recipe {recipe.name}`), no pretrained weights.

**Not a medical device. For research and testing only; not for diagnosis or treatment.**

## Intended use
Demonstrating and testing medcloud's image-diagnosis pipeline on {", ".join(recipe.applies_to["modalities"])}
images of {", ".join(recipe.applies_to["body_parts"]).lower()}. Outputs are calibrated class probabilities
(temperature scaling), to be read by a clinician as a second opinion at most.

## Data and licence
{recipe.data_description}. Training-data fingerprint: see `training_data.fingerprint` in the manifest
(SHA-256 over the sorted per-file SHA-256s).

Licence: `{recipe.licence}`. {recipe.licence_note}

## Input
`medcloud/ai/preprocess.py`: decoded to [0, 1] (DICOM: modality LUT, VOI window, MONOCHROME1
inverted), {"grey" if spec.channels == 1 else "RGB"} ({"RGB -> BT.601 luma" if spec.channels == 1 else "grey repeated"}),
resized to {spec.size[0]}x{spec.size[1]} ({spec.resize}, bilinear), normalised
(x - {norm.mean if norm else 0}) / {norm.std if norm else 1}. Training used the same function.

## Training
Seeded ({setup["seed"]}), PyTorch {setup["torch"]} on CPU with {setup["threads"]} thread(s).
{setup["network"]}.{" The ONNX graph averages the logits of each image and its mirror image (test-time augmentation)." if setup["hflip"] else ""}
Temperature T = {temperature:.3f} fitted on validation NLL and divided into the logits inside the graph.
Wall time: {metrics["train_seconds"]:.0f} s end to end (data loading {setup["load_seconds"]} s) on a shared
2-core machine, run at low priority (`nice`).

## Validation figures
On our own validation split ({report["n"]} images; {"grouped by near-duplicate hash so that no near-copy is on both sides" if recipe.kind == "folder" else "the data set's official validation split"}).
The same split chose the stopping epoch and the temperature, so these figures are slightly optimistic;
an independent test split is kept outside the project.

| metric | value |
| --- | --- |
| accuracy | {report["accuracy"]:.4f} |
| macro ROC AUC | {f"{auc:.4f}" if auc is not None else "n/a"} |
| ECE (15 bins), calibrated | {report["ece"]:.4f} |
| ECE before temperature scaling | {raw["ece"]:.4f} |

| class | precision | recall | F1 | support |
| --- | --- | --- | --- | --- |
{per_class}

Confusion matrix (rows: truth, columns: prediction, in label order):

| | {" | ".join(recipe.labels)} |
| --- | {" | ".join("---" for _ in recipe.labels)} |
{cm}

{images}

## Limits
- Single slices / single projections, no study-level context; one data source, so a site's scanners
  and populations may differ: evaluate on local data first (`medcloud ai evaluate`).
{notes}"""
