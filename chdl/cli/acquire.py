"""Placeholder: this stage is not implemented yet (exits non-zero)."""

import click


@click.command('cameras', context_settings={'ignore_unknown_options': True})
@click.argument('args', nargs=-1, type=click.UNPROCESSED)
def cameras(args):
    """Not implemented yet."""
    raise click.ClickException('cameras' + ': not implemented yet')


@click.command('capture', context_settings={'ignore_unknown_options': True})
@click.argument('args', nargs=-1, type=click.UNPROCESSED)
def capture(args):
    """Not implemented yet."""
    raise click.ClickException('capture' + ': not implemented yet')
