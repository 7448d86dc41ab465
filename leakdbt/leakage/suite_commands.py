"""``leakdbt suite``: the command-line face of :mod:`leakdbt.leakage.suite`."""

from __future__ import annotations

import json
import sys

import click

FORMATS = ["text", "json", "sarif", "html"]


@click.command()
@click.option("--scheduler", metavar="ADDRESS", default=None,
              help="Run the trials on this Dask cluster (tcp://HOST:PORT) instead of a local "
                   "one.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Worker processes of the local cluster (default: one per core).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="text")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Write the report to FILE (default: standard output).")
@click.option("--html", "html_output", type=click.Path(dir_okay=False), default=None,
              help="Also write the HTML report to FILE (one run, two reports: for CI).")
@click.argument("suite_path", metavar="SUITE.toml", type=click.Path(dir_okay=False))
def suite(scheduler: str | None, workers: int | None, fmt: str, output: str | None,
          html_output: str | None, suite_path: str) -> None:
    """Check every entry of SUITE.toml (docs/suite.md), trials as tasks on Dask.
    Exit status over the whole suite: 0 no leak, 1 leaks found, 2 an entry failed or the
    suite file is invalid."""
    from leakdbt.errors import UsageError
    from leakdbt.leakage.check import progress_printer
    from leakdbt.leakage.suite import dask_client, run_suite
    from leakdbt.leakage.suite_file import load_suite

    if scheduler is not None and workers is not None:
        raise UsageError("--workers applies to the local cluster; an existing cluster "
                         "(--scheduler) has its own workers")
    entries = load_suite(suite_path)
    progress = progress_printer()
    with dask_client(scheduler, workers) as client:
        report = run_suite(suite_path, entries, client, progress)
    if progress is not None:
        sys.stderr.write("\r\x1b[K")
    if fmt == "json":
        from leakdbt.leakage.suite_report import to_suite_json

        text = to_suite_json(report)
    elif fmt == "sarif":
        from leakdbt.leakage.sarif import to_suite_sarif

        text = json.dumps(to_suite_sarif([(r.entry.name, r.report, r.error)
                                          for r in report.results],
                                         command_line=["leakdbt", *sys.argv[1:]]),
                          indent=2) + "\n"
    elif fmt == "html":
        from leakdbt.leakage.html import suite_html

        text = suite_html(report)
    else:
        from leakdbt.leakage.suite_report import to_suite_text

        text = to_suite_text(report)
    if html_output:
        from leakdbt.leakage.html import suite_html

        _write(html_output, suite_html(report))
    if output:
        _write(output, text)
    else:
        click.echo(text, nl=False)
    sys.exit(report.status)


def _write(path: str, text: str) -> None:
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        from leakdbt.errors import UsageError

        raise UsageError(f"{path}: {e.strerror or e}") from None
