"""TLS for distml's clusters: which certificate files to use, and the ``Security`` of a client or the embedded cluster.

Files come from the flags or ``cluster.tls_*``, else from Dask's own ``distributed.comm.tls.*`` configuration.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from distml.errors import ClusterError

if TYPE_CHECKING:
    from distributed import Security

    from distml.spec import ClusterSpec

# ClusterSpec key -> Dask's configuration key for a client
TLS_CONFIG_KEYS = {"tls_ca_file": "distributed.comm.tls.ca-file", "tls_cert": "distributed.comm.tls.client.cert",
                   "tls_key": "distributed.comm.tls.client.key"}


def tls_files(spec: ClusterSpec) -> dict[str, str]:
    """The certificate files to use: the spec's (flags or ``cluster.tls_*``), else Dask's ``distributed.comm.tls.*``.

    A file named only in Dask's configuration is checked here, by its configuration key.
    """
    import dask.config

    from distml.errors import SpecError
    from distml.spec import tls_file_problem

    files = {}
    for field, key in TLS_CONFIG_KEYS.items():
        given = getattr(spec, field)
        if given:
            files[field] = given
            continue
        configured = dask.config.get(key, None)
        if configured:
            if "-----BEGIN" not in str(configured):  # Dask also takes the PEM text itself
                problem = tls_file_problem(str(configured))
                if problem:
                    raise SpecError(f"{key} (Dask configuration): {str(configured)[:200]!r} {problem}")
            files[field] = str(configured)
    return files


def client_security(spec: ClusterSpec, address: str) -> Security | None:
    """The ``Security`` a client of the scheduler at ``address`` uses; ``None`` for a plain address without files.

    A ``tls://`` address needs the CA and a client certificate (Dask clusters check
    both sides); without them it is one line here rather than a failure deep in Dask.
    """
    from distributed import Security

    from distml.errors import SpecError

    files = tls_files(spec)
    if not address.startswith("tls://"):
        return None
    missing = [flag for field, flag in (("tls_ca_file", "--tls-ca-file"), ("tls_cert", "--tls-cert"))
               if field not in files]
    if missing:
        raise SpecError(f"{address}: a tls:// scheduler needs {' and '.join(missing)} (or cluster.tls_ca_file/"
                        "tls_cert in the job file, or distributed.comm.tls.* in Dask's configuration)")
    cert = files["tls_cert"]
    return Security(require_encryption=True, tls_ca_file=files["tls_ca_file"], tls_client_cert=cert,
                    tls_client_key=files.get("tls_key"))


def embedded_security(spec: ClusterSpec) -> Security | None:
    """TLS for the embedded cluster when ``cluster.tls`` is set or certificate files are given, else ``None``.

    With files, every role (scheduler, workers, client) uses them; with ``tls: true``
    alone, a temporary self-signed certificate made in memory for this run.
    """
    from distributed import Security

    files = {field: getattr(spec, field) for field in TLS_CONFIG_KEYS if getattr(spec, field)}
    if not (spec.tls or files):
        return None
    if "tls_ca_file" not in files or "tls_cert" not in files:
        if files:
            from distml.errors import SpecError

            raise SpecError("cluster: TLS for the embedded cluster needs both tls_ca_file and tls_cert "
                            "(or neither, with tls: true, for a temporary certificate)")
        try:
            return Security.temporary()
        except ImportError:
            raise ClusterError("cluster.tls: true without certificate files makes a temporary certificate, "
                               "which needs the cryptography package (pip install cryptography)") from None
    cert, key = files["tls_cert"], files.get("tls_key")
    return Security(require_encryption=True, tls_ca_file=files["tls_ca_file"],
                    tls_client_cert=cert, tls_client_key=key, tls_scheduler_cert=cert, tls_scheduler_key=key,
                    tls_worker_cert=cert, tls_worker_key=key)
