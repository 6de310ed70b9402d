"""Issue 16's closing figures: how many bad inputs and injected faults the reliability tests try.

Run: ``python tests/benchmarks/count_reliability.py [--run [bad-inputs|faults]]``. It collects (``pytest --collect-only``,
slow tests included) the test files issue 16 is checked by and counts their test cases, a parametrized
case counting once: bad inputs (a job file, parameter, address or data file a command must refuse in one
line, exit 2) and faults (a worker killed or frozen, a driver killed, a signal, a full disk, a store
refusing, damaged records). The few tests of those files that try valid input on purpose (controls) are
listed in ``CONTROLS`` and not counted. ``--run`` also runs the counted cases (of one group, or both) and prints how
many pass (clean, or ending in a final record); it takes minutes, so the default only collects.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
BAD_INPUTS = ("test_bad_inputs.py", "test_bad_data.py", "test_cli_errors.py")
FAULTS = ("test_faults.py", "test_job_faults.py", "test_stall.py", "test_resume.py")
MIXED = "test_leftovers.py"  # one bad input (a Nystroem map too large), one fault (the record write fails)
BAD_INPUT_TESTS = ("test_a_nystroem_map_too_large", "test_resume_refuses_")  # in MIXED or FAULTS files
CONTROLS = (  # valid input or plain unit checks, not a bad input or a fault
    "test_pandas_index_columns_are_ignored_and_the_model_trains_as_without_them",
    "test_the_footer_check_passes_valid_files_of_every_numeric_kind",
    "test_merge_keys_may_still_be_overridden",
    "test_embedded_worker_ttl_is_bounded_unless_the_user_set_one",
    "test_a_cascade_layer_checkpoint_gives_back_its_sets_and_a_layer_over_the_limit_is_not_gathered",
)


def collect(files: list[str]) -> list[str]:
    """The node ids pytest collects from ``files`` (slow tests included)."""
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "slow or not slow",
                          *(str(TESTS / f) for f in files)], capture_output=True, text=True, check=False)
    return [line for line in out.stdout.splitlines() if "::" in line]


def classify(ids: list[str]) -> dict[str, list[str]]:
    """``{"bad-inputs": [...], "faults": [...]}`` of the collected node ids, controls left out."""
    groups: dict[str, list[str]] = {"bad-inputs": [], "faults": []}
    for node in ids:
        file, name = node.split("::", 1)
        if name.split("[")[0] in CONTROLS:
            continue
        bad = Path(file).name in BAD_INPUTS or name.startswith(BAD_INPUT_TESTS)
        groups["bad-inputs" if bad else "faults"].append(node)
    return groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", nargs="*", choices=["bad-inputs", "faults"], default=None,
                        help="also run the counted cases of these groups (none named: both), count those passing")
    args = parser.parse_args()
    groups = classify(collect([*BAD_INPUTS, *FAULTS, MIXED]))
    for group, nodes in groups.items():
        per_file: dict[str, int] = {}
        for node in nodes:
            per_file[Path(node.split("::")[0]).name] = per_file.get(Path(node.split("::")[0]).name, 0) + 1
        print(f"{group}: {len(nodes)} cases ({', '.join(f'{f} {n}' for f, n in per_file.items())})")
        if args.run is not None and (not args.run or group in args.run):
            out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "slow or not slow", *nodes],
                                 capture_output=True, text=True, check=False, cwd=TESTS.parent)
            print(f"  run: {out.stdout.strip().splitlines()[-1]}")


if __name__ == "__main__":
    main()
