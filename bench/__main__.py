"""Run every benchmark against one loopback fake tenant and Azurite: ``python -m bench [--quick]``.

Prints the results table and writes bench/results/<date>.md (with machine info).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

from bench.report import Line, table, write_results
from bench.rows import Sizes, calls_per_send, warm_sends
from bench.sdks import SDKS, build_venvs
from bench.world import start_world, stop_world

ROWS = ("1", "2", "4", "5", "6", "7", "8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds): a smoke run")
    parser.add_argument("--only", default=",".join(ROWS), help="comma-separated rows (2 includes 3)")
    parser.add_argument(
        "--sdks",
        default=",".join(SDKS),
        help="row 8's own-process contenders (httpx needs no venv; teams and agents build .bench-venvs/ once)",
    )
    parser.add_argument("--no-write", action="store_true", help="print only, do not write bench/results/")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore", DeprecationWarning)  # botbuilder/msrest on import
    sizes = Sizes.quick() if args.quick else Sizes.full()
    only = set(args.only.split(","))
    unknown = set(args.sdks.split(",")) - set(SDKS)
    if unknown:
        parser.error(f"--sdks: unknown {', '.join(sorted(unknown))} (known: {', '.join(SDKS)})")
    lines: list[Line] = []
    notes: list[str] = []
    started = time.perf_counter()

    if "4" in only:
        from bench.coldstart import cold_start

        lines += cold_start(quick=args.quick)

    # Row 8's venvs are built before start_world: pip must see the machine's own CA settings.
    venvs = build_venvs(args.sdks.split(",")) if "8" in only else {}

    world = start_world()
    try:
        import asyncio

        if "4" in only:
            from bench.firstsend import first_send

            lines += first_send(world, quick=args.quick)
        if "1" in only:
            lines += asyncio.run(calls_per_send(world, sizes))
        if "2" in only:
            warm_lines, warm = warm_sends(world, sizes)
            lines += warm_lines
            notes.append(f"Row 2 measured through: {warm.via}.")
        if "8" in only:
            from bench.rows import host_like_logging
            from bench.sdks import AUTH_NOTE, sdk_rows

            host_like_logging()
            lines += sdk_rows(world, venvs, n=sizes.n, repeats=sizes.repeats, conversations=sizes.warm_recipients)
            if set(venvs) - {"httpx"}:
                notes.append(AUTH_NOTE)
        if "5" in only:
            from bench.fanout import fan_out

            fan_lines, fan_notes = asyncio.run(fan_out(world, sizes))
            lines += fan_lines
            notes += fan_notes
        if "7" in only:
            from bench.broadcast import broadcast

            total = 40 if args.quick else 2000
            lines += broadcast(world, total=total, workers=4)
            lines += broadcast(world, total=total, workers=1)
        if "6" in only:
            from bench.cachescale import cache_scale

            cache_lines, cache_notes = asyncio.run(cache_scale(world, sizes))
            lines += cache_lines
            notes += cache_notes
    finally:
        stop_world(world)

    notes.append(f"Total bench time {time.perf_counter() - started:.0f} s.")
    print(table(lines))
    for note in notes:
        print("-", note)
    if not args.no_write:
        command = "python -m bench" + (" --quick" if args.quick else "")
        path = write_results(lines, command=command, notes=notes, quick=args.quick)
        print(f"wrote {path}")
    # A quick run is a smoke run: its tiny sizes make the ratios noise, so only a full run fails on goals.
    return 0 if args.quick or all(line.met is not False for line in lines) else 1


if __name__ == "__main__":
    sys.exit(main())
