"""A running job's checkpoints: its trainer's state after each epoch, tree group, cascade layer or exact-solver step.

Layout, beside the job's record: ``<store>/_jobs/<job-id>/checkpoint-<n>.skops``
(the state: plain values, numpy arrays and fitted scikit-learn trees, never
rows) and ``checkpoint-<n>.json`` (the step, the sha256 of the state file, the
job's data files and its training progress), written last, create-only, so a
checkpoint without its ``.json`` does not exist. Only the newest checkpoint is
kept. Reading checks the sha256 and then ``distml.trust``'s exact allow-list
before skops builds anything: loading a checkpoint never runs code it carries.

Test hook: with ``DISTML_TEST_EXIT_AFTER_CHECKPOINT=N`` in the environment the
process ends (``os._exit(75)``) right after writing checkpoint ``N``, which is
how ``tests/test_resume.py`` kills a driver at a known point.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import posixpath
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from distml.errors import StoreError, io_reason

if TYPE_CHECKING:
    from distml.data import Dataset
    from distml.jobs import JobRecords

EXIT_HOOK = "DISTML_TEST_EXIT_AFTER_CHECKPOINT"
HOOK_EXIT_STATUS = 75
_META = re.compile(r"^checkpoint-(\d+)\.json$")
_PLAIN = (int, float, str, bool, type(None))


def data_files(dataset: Dataset) -> list[dict[str, Any]]:
    """The dataset's files as a checkpoint records them, to tell whether a resume reads the same data."""
    return [{"path": f.key, "rows": f.num_rows, "bytes": f.size} for f in dataset.files]


def fitted_state(model: Any) -> dict[str, Any]:
    """A partial_fit learner's fitted state (arrays and plain values; not its hyper-parameters' objects).

    Objects the learner rebuilds on every ``partial_fit`` (e.g. SGD's loss object) are left out.
    """
    import numpy as np

    return {name: value for name, value in vars(model).items()
            if (name.endswith("_") or name.startswith("_")) and isinstance(value, (np.ndarray, np.generic, *_PLAIN))}


def with_state(template: Any, state: dict[str, Any]) -> Any:
    """A copy of ``template`` carrying a ``fitted_state`` again, ready for the next ``partial_fit``."""
    model = copy.deepcopy(template)
    for name, value in state.items():
        setattr(model, name, value)
    return model


class Checkpoints:
    """One job's checkpoints; ``write`` and ``restore`` are what ``TrainEnv`` calls.

    ``resume`` false (a fresh job): ``restore`` finds nothing, so a trainer starts at step 0.
    ``log`` gets a warning when a checkpoint cannot be written: a store hiccup must not fail a
    long job, which then only loses the chance to resume from that step.
    """

    def __init__(self, records: JobRecords, job_id: str, *, resume: bool = False,
                 log: Callable[[str], None] | None = None) -> None:
        self.records = records
        self.job_id = job_id
        self.resume = resume
        self.log = log or (lambda message: None)
        self.data_files: list[dict[str, Any]] | None = None  # set by the runner once the data is open
        self.progress: Callable[[], float] = lambda: 0.0  # the job's training progress, for the resume report
        self.restored: dict[str, Any] | None = None  # the meta of the checkpoint a resume started from
        self.initial: dict[str, Any] | None = None  # the step-0 state when there is no checkpoint (warm start)

    def uri(self, name: str = "") -> str:
        return posixpath.join(self.records.uri(self.job_id)[: -len(".json")], name)

    def _folder(self) -> tuple[Any, str]:
        fs, _ = self.records._fs()
        return fs, self.records._path(self.job_id, "")

    # --- writing ---------------------------------------------------------------

    def write(self, step: int, state: dict[str, Any]) -> None:
        """Save checkpoint ``step`` (state file, then its meta create-only), then drop older ones."""
        from distml.skops_io import skops_io
        from distml.store import _create, _is_object_store

        sio = skops_io()

        payload = sio.dumps(state)
        meta = {"job_id": self.job_id, "step": step, "sha256": hashlib.sha256(payload).hexdigest(),
                "bytes": len(payload), "data_files": self.data_files, "progress": float(self.progress())}
        fs, folder = self._folder()
        base = posixpath.join(folder, f"checkpoint-{step}")
        try:
            if not _is_object_store(fs):
                fs.makedirs(folder, exist_ok=True)
                tmp = f"{base}.skops.tmp"
                fs.pipe_file(tmp, payload)
                fs.mv(tmp, f"{base}.skops")
            else:
                fs.pipe_file(f"{base}.skops", payload)
            try:
                _create(fs, f"{base}.json", json.dumps(meta, indent=1).encode())
            except FileExistsError:  # a resumed run reaching a step it had reached before: same state
                fs.pipe_file(f"{base}.json", json.dumps(meta, indent=1).encode())
            for older in self._steps(fs, folder):
                if older < step:
                    fs.rm([posixpath.join(folder, f"checkpoint-{older}.{ext}") for ext in ("json", "skops")])
        except Exception as exc:  # noqa: BLE001 - a checkpoint is a chance to resume, not the job
            self.log(f"warning: checkpoint {step} not written to {self.uri()} ({io_reason(exc)})")
            return
        if os.environ.get(EXIT_HOOK) == str(step):  # test hook: die here, as a killed driver would
            os._exit(HOOK_EXIT_STATUS)

    def discard(self) -> None:
        """Remove this job's checkpoints (best effort): when the store is full, the job's record comes first."""
        fs, folder = self._folder()
        try:
            fs.rm(folder, recursive=True)
        except Exception:  # noqa: BLE001 - nothing to free, or the store is gone: the caller reports that
            return

    # --- reading ---------------------------------------------------------------

    @staticmethod
    def _steps(fs: Any, folder: str) -> list[int]:
        try:
            fs.invalidate_cache(folder)
            names = [posixpath.basename(p) for p in fs.ls(folder, detail=False)]
        except FileNotFoundError:
            return []
        return sorted(int(m.group(1)) for m in map(_META.match, names) if m)

    def latest(self) -> dict[str, Any] | None:
        """The newest checkpoint's meta (step, data files, progress), or None if there is none."""
        fs, folder = self._folder()
        steps = self._steps(fs, folder)
        if not steps:
            return None
        where = self.uri(f"checkpoint-{steps[-1]}.json")
        try:
            meta = json.loads(fs.cat_file(posixpath.join(folder, f"checkpoint-{steps[-1]}.json")))
        except ValueError:
            raise StoreError(f"{where}: not a valid checkpoint (not JSON)") from None
        if not isinstance(meta, dict) or meta.get("step") != steps[-1] or not isinstance(meta.get("sha256"), str):
            raise StoreError(f"{where}: not a valid checkpoint (expected an object with its step and sha256)")
        return meta

    def restore(self) -> tuple[int, dict[str, Any]] | None:
        """The newest checkpoint's (step, state) when resuming, else ``(0, initial)`` or None.

        The state file is verified (sha256, then the trust list) before it is loaded.
        """
        meta = self.latest() if self.resume else None
        if meta is None:
            return None if self.initial is None else (0, self.initial)
        from distml.skops_io import skops_io  # only now: a new job does not wait for skops to load
        from distml.trust import check_model_file

        sio = skops_io()

        step = meta["step"]
        fs, folder = self._folder()
        where = self.uri(f"checkpoint-{step}.skops")
        try:
            payload = fs.cat_file(posixpath.join(folder, f"checkpoint-{step}.skops"))
        except FileNotFoundError:
            raise StoreError(f"{where}: listed by its checkpoint but missing") from None
        if hashlib.sha256(payload).hexdigest() != meta["sha256"]:
            raise StoreError(f"{where}: sha256 does not match its checkpoint; the file was changed or corrupted")
        state = sio.loads(payload, trusted=check_model_file(payload, where))
        if not isinstance(state, dict):
            raise StoreError(f"{where}: not a valid checkpoint (expected a mapping of state)")
        self.restored = meta
        return step, state
