"""
Instructions per keep-alive request in the gate, counted by callgrind: a
figure that does not drift with a shared VM's speed, for comparing checkouts.

    python bench/gate_instructions.py                    # this checkout
    python bench/gate_instructions.py /tmp/before        # and another, side by side

Runs `bench/profile_gate.py` of each checkout under `valgrind --tool=callgrind`
twice, with a small and a large number of requests, and divides the
difference of the two instruction counts by the difference of the numbers:
the interpreter's start-up and the imports cancel out, what is left is one
request's parse, auth check, forward, answer framing and access-log event.
The counts of one checkout repeat within about 1%; the run takes a minute
or two. Needs valgrind (Debian's `valgrind` package).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

CHECKOUT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_COLLECTED = re.compile(rb"Collected : (\d+)")


def instructions(checkout: str, requests: int) -> int:
    """
    The instructions callgrind counts for one run of C{requests} requests.
    """
    done = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            os.path.join(checkout, "bench", "profile_gate.py"),
            "-n",
            str(requests),
            "-r",
            "1",
        ],
        cwd=checkout,
        capture_output=True,
        timeout=1800,
        check=False,
    )
    found = _COLLECTED.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(
            f"callgrind over {checkout} failed:\n{done.stderr.decode()[-2000:]}"
        )
    return int(found.group(1))


def per_request(checkout: str, small: int, large: int) -> float:
    with ThreadPoolExecutor(2) as pool:
        low, high = pool.map(lambda n: instructions(checkout, n), (small, large))
    return (high - low) / (large - small)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("others", nargs="*", help="other checkouts to compare")
    parser.add_argument("--small", type=int, default=1000, help="requests, short run")
    parser.add_argument("--large", type=int, default=3000, help="requests, long run")
    options = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    if options.large <= options.small:
        raise SystemExit("--large must be more than --small")
    checkouts = [CHECKOUT_ROOT, *(os.path.abspath(o) for o in options.others)]
    results = {c: per_request(c, options.small, options.large) for c in checkouts}
    base = results[CHECKOUT_ROOT]
    for checkout, count in results.items():
        print(
            f"{checkout}: {count:,.0f} instructions per request "
            f"({count / base:.3f} of this checkout's)"
        )


if __name__ == "__main__":
    main()
