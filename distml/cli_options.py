"""What the commands share: the error-to-exit-status group, option types and the common options."""
from __future__ import annotations

import os
from typing import Any

import click

from distml.errors import DistmlError


class CliError(click.ClickException):
    """A ``DistmlError`` as click shows it: one ``Error: …`` line on stderr and its exit status."""

    def __init__(self, error: DistmlError) -> None:
        super().__init__(error.message)
        self.exit_code = error.exit_code


class Group(click.Group):
    """Turns every ``DistmlError`` raised by a command into its one-line message and exit status."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DistmlError as exc:
            if os.environ.get("DISTML_DEBUG"):
                raise
            raise CliError(exc) from None


class Size(click.ParamType):
    """A memory size like ``2GiB``."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from distml.spec import parse_size

        try:
            parse_size(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        return str(value)


class StorageOption(click.ParamType):
    """``KEY=VALUE``, one fsspec option for an s3:// store; a dotted key nests (``client_kwargs.region_name=…``)."""

    name = "key=value"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, Any]:
        if isinstance(value, tuple):
            return value
        key, sep, raw = str(value).partition("=")
        if not sep or not key.strip():
            self.fail("expected KEY=VALUE, e.g. endpoint_url=http://127.0.0.1:9000", param, ctx)  # no echo: a secret
        return key.strip(), {"true": True, "false": False}.get(raw.lower(), raw)  # other values stay strings


def storage_options(pairs: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    """``-o`` pairs as the nested dict fsspec takes (the same shape as a job file's ``storage_options``)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


storage_option = click.option(
    "-o", "--storage-option", "options", type=StorageOption(), multiple=True, metavar="KEY=VALUE",
    help="fsspec option for an s3:// store, repeatable (endpoint_url=URL, key=…, secret=…, "
         "client_kwargs.region_name=…); without it credentials come from the usual AWS environment variables.")


signing_key_option = click.option(
    "--signing-key-file", default=None, type=click.Path(dir_okay=False), metavar="PATH",
    help="File holding the manifest signing key (default: $DISTML_SIGNING_KEY); "
         "with a key, unsigned or badly signed manifests are refused.")


def metric_text(name: str, value: float) -> str:
    """A metric as the summaries print it."""
    return f"{name} {value:.4f}" if isinstance(value, float) else f"{name} {value}"


def selection_lines(cv: dict[str, Any] | None, search: dict[str, Any] | None, top: int = 10) -> list[str]:
    """The summary's cross-validation line and search table (best first, ``top`` rows)."""
    lines = []
    if cv:
        scoring = cv["scoring"]
        lines.append(f"  cv        {scoring} {cv['mean'][scoring]:.4f} ± {cv['std'][scoring]:.4f} "
                     f"({cv['k']} folds; the saved model is refitted on all training rows)")
    if search:
        rows = [r for r in search["candidates"] if r.get("mean") is not None and not r.get("error")]
        last = max((r["round"] for r in rows), default=0)
        reverse = search["scoring"] not in ("log_loss", "rmse", "mae")
        ranked = sorted((r for r in rows if r["round"] == last), key=lambda r: r["mean"], reverse=reverse)
        ranked += sorted((r for r in rows if r["round"] != last),  # stopped early: later rounds first
                         key=lambda r: (-r["round"], -r["mean"] if reverse else r["mean"]))
        failed = len(search["candidates"]) - len(rows)
        lines.append(f"  search    {len(search['candidates'])} candidates by {search['scored_by']}"
                     f"{f', {failed} failed' if failed else ''}; best "
                     + ", ".join(f"{k}={v}" for k, v in search["best"].items()))
        lines.append(f"    {'rank':<5} {search['scoring'] + ' (mean ± std)':<22} {'rows':>9} {'time':>7}  params")
        for rank, row in enumerate(ranked[:top], 1):
            params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row["params"].items())
            lines.append(f"    {rank:<5} {row['mean']:.4f} ± {row['std']:.4f}{'':<5} {row['train_rows']:>9,} "
                         f"{row['seconds']:>6.1f}s  {params}")
        if len(ranked) > top:
            lines.append(f"    ({len(ranked) - top} more in the manifest)")
    return lines


_TLS_META = "distml.tls"


def _keep_tls(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    if value is not None and value is not False:
        ctx.meta.setdefault(_TLS_META, {})[param.name] = value
    return value


def tls_options(command: Any) -> Any:
    """``--tls-ca-file``, ``--tls-cert``, ``--tls-key``: certificates for a ``tls://`` scheduler (read by ``tls_flags``)."""
    for flag, name, text in reversed([
        ("--tls-ca-file", "tls_ca_file", "CA certificate (PEM) the scheduler's certificate is checked against."),
        ("--tls-cert", "tls_cert", "Client certificate (PEM; may also hold the key) for a tls:// scheduler."),
        ("--tls-key", "tls_key", "Private key of --tls-cert (PEM), if not in the certificate file."),
    ]):
        command = click.option(flag, name, default=None, metavar="PATH", expose_value=False, callback=_keep_tls,
                               help=text + " Default: distributed.comm.tls.* in Dask's configuration.")(command)
    return command


def tls_flags() -> dict[str, str]:
    """The ``--tls-*`` values the current command was given, as ``ClusterSpec`` keys."""
    ctx = click.get_current_context(silent=True)
    return dict(ctx.meta.get(_TLS_META, {})) if ctx is not None else {}


def apply_tls_flags() -> None:
    """Put the ``--tls-*`` files in this process's Dask configuration, for commands that reach a job's scheduler
    by its recorded address (``jobs …``); each file is checked first (one line naming the flag)."""
    flags = tls_flags()
    if not flags:
        return  # before any import: `jobs list` must not pay for dask
    import dask.config

    from distml.tls import TLS_CONFIG_KEYS
    from distml.spec import ClusterSpec

    ClusterSpec(**flags)  # exists and readable, or a SpecError naming the flag
    dask.config.set({TLS_CONFIG_KEYS[k]: v for k, v in flags.items()})
