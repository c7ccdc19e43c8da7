"""The demo's model: a small intent classifier for maintenance messages, built on a
BERT checkpoint (all-MiniLM-L6-v2 by default) in a few seconds on a CPU.

A classifier rather than an embedding model, so every in-field chart has something to
show: confidences (and their drift), and feedback accuracy from the traffic generator,
which knows the true intent of each message it sends. The encoder is kept as is; only
the classification head is fitted (logistic regression on the pooled output of
TRAIN), and `transformers` writes the Hugging Face folder the server then uploads,
exports to ONNX and compresses like any operator's model.
"""

from __future__ import annotations

import shutil
from pathlib import Path

# intent -> messages the head is fitted on
TRAIN: dict[str, list[str]] = {
    "vibration": [
        "The pump on line 3 is vibrating.",
        "Strong vibration on the conveyor motor.",
        "Bearing noise and shaking on fan 2.",
        "The compressor rattles and shakes.",
        "Excessive vibration detected on spindle 4.",
        "Motor mount is loose, machine shakes.",
        "Vibration levels are rising on the gearbox.",
        "The drill press wobbles when running.",
    ],
    "overheating": [
        "Motor temperature is too high.",
        "The gearbox is overheating.",
        "Hot smell near the control cabinet.",
        "Cooling fan failed, the drive is getting hot.",
        "Thermal alarm on the furnace controller.",
        "Bearing temperature climbed to 95 degrees.",
        "The inverter shut down because of heat.",
        "Oil temperature is above the limit.",
    ],
    "leak": [
        "Oil is leaking under press 7.",
        "Water drips from the cooling pipe.",
        "Hydraulic fluid on the floor near the lift.",
        "Air leak hissing at the pneumatic valve.",
        "Coolant puddle under the lathe.",
        "The seal on pump 2 is leaking.",
        "Steam escaping from the boiler flange.",
        "Fuel leak at the generator hose.",
    ],
    "normal": [
        "All machines are running normally.",
        "Shift handover, nothing to report.",
        "Line 2 restarted after cleaning, all good.",
        "Routine inspection completed without findings.",
        "Production is on schedule today.",
        "The new batch started on time.",
        "Filters replaced as planned.",
        "Everything looks fine on the packaging line.",
    ],
}

# What the traffic generator sends (with the true intent, for feedback): new wordings,
# a few deliberately ambiguous, so in-field accuracy is measured, not assumed.
TRAFFIC: list[tuple[str, str]] = [
    ("Pump 5 is shaking badly.", "vibration"),
    ("Loud rattling from the blower.", "vibration"),
    ("The saw blade vibrates at high speed.", "vibration"),
    ("Unusual shaking of the mixer, and it feels warm.", "vibration"),
    ("The motor casing is very hot to touch.", "overheating"),
    ("Temperature alarm on extruder 1.", "overheating"),
    ("The transformer is overheating again.", "overheating"),
    ("It smells like burning plastic near the heater.", "overheating"),
    ("Oil dripping from the gearbox.", "leak"),
    ("A pipe under sink 3 is leaking water.", "leak"),
    ("Hydraulic hose is losing pressure and fluid.", "leak"),
    ("Wet floor next to the chiller, maybe a leak.", "leak"),
    ("Everything is running fine.", "normal"),
    ("No issues on line 4 this morning.", "normal"),
    ("Maintenance done, machine back in service.", "normal"),
    ("The line is quiet and stable.", "normal"),
]

_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)


def build_classifier(base: Path, out: Path, steps: int = 300) -> Path:
    """Write a BertForSequenceClassification folder for the intents of TRAIN to `out`."""
    import torch
    import transformers

    torch.manual_seed(0)
    labels = sorted(TRAIN)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(base))
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        str(base),
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    model.eval()
    texts = [t for label in labels for t in TRAIN[label]]
    target = torch.tensor([labels.index(label) for label in labels for _ in TRAIN[label]])
    with torch.no_grad():
        encoded = tokenizer(
            texts, padding=True, truncation=True, max_length=64, return_tensors="pt"
        )
        pooled = model.base_model(**encoded).pooler_output
    head = model.classifier
    optimiser = torch.optim.Adam(head.parameters(), lr=0.05, weight_decay=1e-3)
    for _ in range(steps):
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(pooled), target)
        loss.backward()
        optimiser.step()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    # The checkpoint's own tokenizer files, byte for byte (not re-serialised).
    for name in _TOKENIZER_FILES:
        if (base / name).is_file():
            shutil.copyfile(base / name, out / name)
    return out


def main(argv: list[str] | None = None) -> int:
    """`python -m tinyfleet.demo_model BASE OUT`: the demo runs this in a subprocess, so
    torch stays out of its own memory and its loading chatter out of the demo's output."""
    import argparse

    parser = argparse.ArgumentParser(description="fit the demo intent classifier")
    parser.add_argument("base", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    build_classifier(args.base, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
