"""`python -m bench.spy FILE`: summarise a py-spy raw profile (`py-spy record -f raw`) of a worker.

Prints the functions with the most samples (self and inclusive) and the share of
the process's samples in each part of the hot path (issue #13): the first rule
matching a sample's stack, innermost frame first, names its part.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter

# (part, pattern on "function (file:line)" frames); the innermost matching frame decides.
_F = r"^(?:[\w<>]+\.)*"  # qualified name prefix: "RiskState.", "AsyncStore.encode_delta.<locals>."
PARTS: tuple[tuple[str, str], ...] = (
    ("entity state decode/encode", _F + r"(decode|encode|copy|_names|_quote|_unquote) \(stream/(events/entities|kpis)"),
    ("validation: UTC conversion", _F + r"_to_utc \("),
    ("validation (pydantic-core)", _F + r"(_validate|decode) \(stream/events/decode"),
    ("entity merge", _F + r"(merge|_see_stage|item_of|relevant|amount_micros) \("),
    ("entity contribute", _F + r"(contribute|expiry_us|business_us|_opening|bucket_index|field|__init__) \("),
    ("fold: buckets and differences", _F + r"(add|add_one|add_member|spread|_targets|_apply_difference) \("),
    ("fold (own loop)", _F + r"(fold|remember) \(stream/events/fold"),
    ("prepare: digests, keys", _F + r"(prepare|event_digest|entity_keys) \("),
    ("delta encoding (writer)", _F + r"(encode_delta|_exact|<listcomp>|<setcomp>) \(stream/store/writer"),
    ("Redis client", r"redis/"),
    ("aiokafka (fetch, record unpacking)", r"aiokafka/"),
    ("dead letters, metrics", r"(dead_letters|prometheus_client)"),
    ("event loop, other", r"."),
)


def _frames(stack: str) -> list[str]:
    """Frames outermost first, as "qualname (file)" without line numbers."""
    return [re.sub(r":\d+\)$", ")", f) for f in stack.split(";") if f]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("raw", help="py-spy record -f raw output")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--idle", action="store_true", help="count idle samples (waiting in select/epoll) too")
    args = ap.parse_args()
    self_n: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    parts: Counter[str] = Counter()
    total = 0
    rules = [(name, re.compile(rx)) for name, rx in PARTS]
    with open(args.raw) as fh:
        for line in fh:
            stack, _, n_text = line.rstrip("\n").rpartition(" ")
            n = int(n_text)
            frames = _frames(stack)
            if not frames:
                continue
            if (
                not args.idle
                and re.search(r"^(select|poll|_run_once|run_forever) \(", frames[-1])
                and ("selectors" in frames[-1] or "select (" in frames[-1])
            ):
                continue
            total += n
            self_n[frames[-1]] += n
            for f in set(frames):
                incl[f] += n
            for f in reversed(frames):
                hit = next((name for name, rx in rules[:-1] if rx.search(f)), None)
                if hit is not None:
                    parts[hit] += n
                    break
            else:
                parts[PARTS[-1][0]] += n
    print(f"{total} samples (busy)")
    print("\nparts of the hot path (innermost matching frame):")
    for name, n in parts.most_common():
        print(f"  {100 * n / total:5.1f} %  {name}")
    print("\nself:")
    for f, n in self_n.most_common(args.top):
        print(f"  {100 * n / total:5.1f} %  {f}")
    print("\ninclusive:")
    for f, n in incl.most_common(args.top):
        print(f"  {100 * n / total:5.1f} %  {f}")


if __name__ == "__main__":
    main()
