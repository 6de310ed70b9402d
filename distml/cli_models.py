"""``distml models``: list the models in a store and show a version's manifest, reading the store only."""
from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import click

from distml.cli_options import Group, metric_text, signing_key_option, storage_option, storage_options


@click.group(cls=Group)
def models() -> None:
    """List and show saved models."""


@models.command("list")
@click.argument("store", default="./models")
@storage_option
def models_list(store: str, options: tuple[tuple[str, Any], ...]) -> None:
    """List the models and versions in STORE."""
    from distml.errors import StoreError
    from distml.store import Store

    st = Store(store, storage_options(options))
    with reading_store(store):
        names = st.models()
        if not names:
            click.echo(f"no models in {store}", err=True)
            return
        for name in names:
            for version in st.versions(name):
                try:
                    metrics = st.read_manifest(name, version).get("metrics", {})
                except StoreError as exc:  # one damaged version must not hide the others
                    click.echo(f"warning: skipped {exc.message}", err=True)
                    continue
                shown = ", ".join(metric_text(k, v) for k, v in metrics.items() if k != "rows") \
                    if isinstance(metrics, dict) else ""
                click.echo(f"{name}  {version}  {shown}")


@models.command("show")
@click.argument("uri")
@storage_option
@signing_key_option
def models_show(uri: str, options: tuple[tuple[str, Any], ...], signing_key_file: str | None) -> None:
    """Show the manifest of the model version at URI (``<store>/<name>[/<version>]``).

    Its signature status and whether the training data changed since go to stderr; with a signing key, a manifest that is unsigned or
    does not match the key is refused.
    """
    from distml.lineage import data_changes
    from distml.signing import resolve_key, verify
    from distml.store import MANIFEST, split_uri

    key = resolve_key(key_file=signing_key_file)
    st, name, version = split_uri(uri, storage_options(options))
    with reading_store(st.url):
        version = version or st.latest(name)
        manifest = st.read_manifest(name, version)
        status = verify(manifest, key, st.uri(name, version, MANIFEST))
    click.echo(json.dumps(manifest, indent=2))
    click.echo(f"{st.uri(name, version)}: {status}", err=True)
    report = manifest.get("evaluation_report")
    if isinstance(report, str) and report in manifest["files"]:
        click.echo(f"evaluation report: {st.uri(name, version, report)}", err=True)
    for line in data_changes(manifest, storage_options(options)):  # re-stats the training files
        click.echo(line, err=True)


@contextlib.contextmanager
def reading_store(url: str) -> Iterator[None]:
    """Turn a store that cannot be read (wrong credentials, unreachable server) into one line and exit 2.

    The message is the filesystem's first line, which names the refusal, never the secret.
    """
    from distml.errors import DistmlError, StoreError, first_line

    try:
        yield
    except (DistmlError, BrokenPipeError):  # `distml models list | head`: click ends it quietly
        raise
    except Exception as exc:
        raise StoreError(f"{url}: cannot read the store ({type(exc).__name__}: {first_line(exc)})") from None
