"""What keeps a ``distml`` command's fixed cost small: a light job-file parse, background imports, a prompt exit."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

HEAVY = ("sklearn", "skops", "scipy", "pandas", "pyarrow", "distributed", "matplotlib", "numba")


def test_the_job_file_is_read_without_importing_the_libraries_the_cluster_waits_for(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(textwrap.dedent(f"""\
        name: light
        data: {{path: {tmp_path}/data, target: y}}
        model: {{kind: svm, params: {{kernel: rbf, approximation: nystroem}}}}
        output: {{store: {tmp_path}/models}}
    """))
    code = ("import json, sys\nfrom distml.cli import main\nfrom distml.jobfile import load_job\n"
            f"load_job({str(job)!r})\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(out.stdout) == []  # the embedded cluster starts before any of them is imported


def test_the_command_exits_with_its_status_and_all_its_output(tmp_path):
    """``distml`` ends with ``os._exit`` after flushing: the status and every line must survive it."""
    from distml.cli import main

    helped = subprocess.run([sys.executable, "-m", "distml", "jobs", "--help"], capture_output=True, text=True,
                            timeout=60)
    listed = [line.split()[0] for line in helped.stdout.split("Commands:\n")[-1].splitlines()]
    assert (helped.returncode, listed) == (0, sorted(main.commands["jobs"].commands))  # the last line too
    store = tmp_path / "models"
    store.mkdir()
    listed = subprocess.run([sys.executable, "-m", "distml", "models", "list", str(store)],
                            capture_output=True, text=True, timeout=60)
    assert (listed.returncode, listed.stdout, listed.stderr) == (0, "", f"no models in {store}\n")
    missing = tmp_path / "missing.yaml"
    refused = subprocess.run([sys.executable, "-m", "distml", "submit", str(missing)],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == (
        f"Error: Invalid value for 'JOB_FILE': File '{missing}' does not exist.")


def test_a_listing_piped_into_a_reader_that_stops_early_ends_quietly(tmp_path):
    """``distml models list | head -1``: the closed pipe is not reported as a store that cannot be read."""
    import fcntl
    import os

    store = tmp_path / "models"
    for i in range(400):  # about 50 KiB of listing: far more than the pipe below holds
        version = store / "m" / f"20261207T000000{i:06d}Z-abcdef"
        version.mkdir(parents=True)
        (version / "manifest.json").write_text(json.dumps({"files": {}, "metrics": {"accuracy": 0.5}}))
    read, write = os.pipe()
    fcntl.fcntl(write, 1031, 4096)  # F_SETPIPE_SZ: a one-page pipe, so the listing waits for its reader
    with (tmp_path / "stderr").open("w+") as err:
        listing = subprocess.Popen([sys.executable, "-m", "distml", "models", "list", str(store)], stdout=write,
                                   stderr=err, text=True)
        os.close(write)
        with os.fdopen(read) as out:
            first = out.readline()
        listing.wait(timeout=60)
        err.seek(0)
        message = err.read()
    assert first == "m  20261207T000000000000Z-abcdef  accuracy 0.5000\n"
    assert message == ""  # neither "cannot read the store" nor a traceback
    assert listing.returncode == 1  # click's quiet exit for a closed pipe
