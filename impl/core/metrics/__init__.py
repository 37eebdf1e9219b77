"""The `evaluate` metrics the suite uses, as local metric modules loaded by path.

`evaluate.load("accuracy")` fetches its script from the hub, which machines without one cannot reach, so each
metric lives here as `<name>/<name>.py` (an `evaluate.Metric` computing through a kept library such as
scikit-learn) and is loaded the way evaluate loads any local module:

    from impl.core.metrics import load_metric
    load_metric("accuracy").compute(predictions=[1, 0], references=[1, 1])   # {'accuracy': 0.5}
"""
from __future__ import annotations

from pathlib import Path

from impl.core.errors import MilestonesError

METRICS_DIR = Path(__file__).resolve().parent


def load_metric(name: str):
    import evaluate

    path = METRICS_DIR / name
    if not (path / f"{name}.py").exists():
        known = sorted(p.name for p in METRICS_DIR.iterdir() if (p / f"{p.name}.py").exists())
        raise MilestonesError(f"no local metric {name!r}; known: {', '.join(known)}")
    return evaluate.load(str(path))
