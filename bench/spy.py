"""`python -m bench.spy FILE`: summarise a py-spy raw profile (`py-spy record -f raw`) of a worker.

Prints the share of the process's samples in each part of the hot path (issue
#13) — the innermost frame of a sample that matches a rule names its part — and
the functions with the most samples, self and inclusive. Frames of code compiled
by mypyc (`py-spy --native`: `CPyDef_fold___fold`) count as their Python
functions (`fold (stream/events/fold)`).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

# (part, pattern on "qualname (file)" frames); the innermost matching frame decides.
_F = r"^(?:[\w<>]+\.)*"  # qualified name prefix: "RiskState.", "AsyncStore.encode_delta.<locals>."
PARTS: tuple[tuple[str, str], ...] = (
    (
        "entity state decode/encode/copy",
        _F + r"(decode|encode|copy|_layout|_quote|_unquote) \(stream/(events/entities|kpis)",
    ),
    ("validation (pydantic-core)", _F + r"(_validate|decode) \(stream/events/decode"),
    ("entity merge", _F + r"(merge|absorb|_see_stage|item_of|relevant|amount_micros) \("),
    ("entity contribute", _F + r"(contribute|expiry_us|business_us|_opening|bucket_index|field|of|__init__) \("),
    ("fold: buckets and differences", _F + r"(add|add_one|add_member|key|spread|_targets|_apply_difference) \("),
    ("fold (own loop), memo", _F + r"(fold|remember) \(stream/events/fold"),
    ("prepare: digests, keys", _F + r"(prepare|event_digest|entity_keys|_context) \("),
    ("delta encoding (writer)", r"stream/store/writer"),
    ("Redis client", r"redis/"),
    ("aiokafka (fetch, record unpacking)", r"aiokafka/"),
    ("dead letters, metrics", r"(dead_letters|prometheus_client)"),
    ("event loop, other", r"."),
)
_RULES = [(name, re.compile(rx)) for name, rx in PARTS[:-1]]
_EVENTS = {"decode", "entities", "fold", "windows"}


def _frame(text: str) -> str:
    """One frame as "qualname (file)": line numbers dropped, mypyc's C names mapped back to Python's."""
    native = re.match(r"CPyDef_(\w+?)___(\w+) \(", text)
    if native:
        module, name = native.groups()
        package = "events" if module in _EVENTS else "kpis"
        return f"{name.replace('___', '.')} (stream/{package}/{module}.py)"
    return re.sub(r":\d+\)$", ")", text)


def summarise(raw: Path, top: int = 25) -> None:
    """Print the parts, self and inclusive tables of a raw profile."""
    self_n: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    parts: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n_text = line.rpartition(" ")
        frames = [_frame(f) for f in stack.split(";") if f and not f.startswith("CPyPy_")]
        if not frames:
            continue
        n = int(n_text)
        total += n
        self_n[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
        part = next((name for f in reversed(frames) for name, rx in _RULES if rx.search(f)), PARTS[-1][0])
        parts[part] += n
    print(f"{total} samples")
    print("\nparts of the hot path (innermost matching frame):")
    for name, n in parts.most_common():
        print(f"  {100 * n / total:5.1f} %  {name}")
    print("\nself:")
    for f, n in self_n.most_common(top):
        print(f"  {100 * n / total:5.1f} %  {f}")
    print("\ninclusive:")
    for f, n in incl.most_common(top):
        print(f"  {100 * n / total:5.1f} %  {f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("raw", type=Path, help="py-spy record -f raw output")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    summarise(args.raw, args.top)


if __name__ == "__main__":
    main()
