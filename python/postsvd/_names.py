"""Names of model folders as people read them: progress bars, titles, reports, output sub-folders."""
from __future__ import annotations

import os
from typing import List, Sequence


def short_name(path) -> str:
    """The folder's last component ('models/instruct/' -> 'instruct'); the path itself when it has none."""
    text = os.fspath(path)
    return os.path.basename(os.path.normpath(text)) or text


def distinct(labels: Sequence[str]) -> List[str]:
    """The labels, with -2, -3, ... appended to repeats: ['post', 'post'] -> ['post', 'post-2']."""
    names: List[str] = []
    for name in labels:
        candidate, n = name, 2
        while candidate in names:
            candidate, n = f"{name}-{n}", n + 1
        names.append(candidate)
    return names
