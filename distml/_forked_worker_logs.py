"""Imported by the embedded workers' forkserver (``distml.cluster``), so that the workers forked from it keep
distributed's log lines off the submitter's terminal, as spawned ones do with ``LocalCluster(silence_logs=...)``;
``DISTML_DEBUG=1`` leaves them on."""
import logging
import os

if not os.environ.get("DISTML_DEBUG"):
    for name in ("distributed", "tornado", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
