"""Placeholder: this stage is not implemented yet (exits non-zero)."""

import click


@click.command('bench', context_settings={'ignore_unknown_options': True})
@click.argument('args', nargs=-1, type=click.UNPROCESSED)
def bench(args):
    """Not implemented yet."""
    raise click.ClickException('bench' + ': not implemented yet')
