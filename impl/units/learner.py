"""`python -m impl learner init DIR`: a package with every unit as a stub (its signature, its docstring,
`raise NotImplementedError`) for a learner to fill in, one module per milestone."""
from __future__ import annotations

import ast
import inspect
from pathlib import Path

from impl import units

HEADER = '''"""{milestone}'s units, the learner's versions. Fill in a body and run its test:

    python -m impl units --impl {path} -m {milestone}
    pytest tests/units -k {milestone} --impl {path}
    pytest acceptance -m "{milestone} and cpu" --impl {path} --impl-fallback   # the milestone built on them

A function left as `raise NotImplementedError` is not implemented: `--impl-fallback` uses the reference for it.
Call another unit through `{milestone}.<name>` so that yours are used there too.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from impl.units import {milestone}

Layer = Callable[[torch.Tensor], torch.Tensor]
'''


def stub_source(fn) -> str:
    """The reference function's `def` line(s) and docstring (not its decorators), then `raise NotImplementedError`."""
    src = inspect.getsource(inspect.unwrap(fn))
    node = ast.parse(src).body[0]
    lines = src.splitlines(keepends=True)
    return "".join(lines[node.lineno - 1:node.body[0].end_lineno]) + "    raise NotImplementedError\n"


def init(path: Path) -> list[Path]:
    """Write the package (never over an existing file: a learner's work is not overwritten)."""
    path.mkdir(parents=True, exist_ok=True)
    written = []
    init_py = path / "__init__.py"
    if not init_py.exists():
        init_py.write_text('"""A learner\'s implementation of the llm-milestones units (python -m impl learner init)."""\n')
        written.append(init_py)
    for m in units.MILESTONES:
        target = path / f"{m}.py"
        if target.exists():
            continue
        body = "\n\n".join(stub_source(fn) for fn in units.catalogue(m).values())
        target.write_text(HEADER.format(milestone=m, path=path) + "\n\n" + body)
        written.append(target)
    return written
