"""The top of a py-spy profile: each frame's share of the samples, self and inclusive.

    py-spy record --pid PID -r 250 -d 15 -f raw -o profile.txt
    python bench/profile_top.py profile.txt [--top 30] [--frame NAME ...]

Executor threads waiting for work (`concurrent/futures/thread.py` in `work_queue.get`) are
left out: py-spy counts some of those waits as active, which would dilute every share.
With --frame, only the named frames (as printed, e.g. "Limiter.admit [limiter.py]") are
shown, inclusive, so two profiles can be compared line by line.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

_IDLE_WAIT = "concurrent/futures/thread.py:81"


def frame_name(frame: str) -> str:
    """`function (path:line)` as `function [file]`."""
    function, _, location = frame.partition(" (")
    return f"{function} [{location.rsplit('/', 1)[-1].split(':')[0]}]"


def load(path: Path) -> tuple[Counter[str], Counter[str], int]:
    """Self and inclusive sample counts per frame, and the total, from a raw py-spy file."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = stack.split(";")
        if _IDLE_WAIT in frames[-1]:
            continue
        samples = int(count)
        total += samples
        own[frame_name(frames[-1])] += samples
        for name in {frame_name(frame) for frame in frames}:
            inclusive[name] += samples
    return own, inclusive, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--frame", action="append", default=[])
    args = parser.parse_args()
    own, inclusive, total = load(args.profile)
    if not total:
        raise SystemExit(f"{args.profile}: no samples")
    print(f"{total} samples")
    if args.frame:
        for name in args.frame:
            print(f"{100 * inclusive[name] / total:5.1f}%  {name}")
        return
    for title, counts in (("self", own), ("inclusive", inclusive)):
        print(f"-- {title}")
        for name, samples in counts.most_common(args.top):
            print(f"{100 * samples / total:5.1f}%  {name}")


if __name__ == "__main__":
    main()
