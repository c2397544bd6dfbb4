"""Placeholder: this stage is not implemented yet (exits non-zero)."""

import click


@click.command('curate', context_settings={'ignore_unknown_options': True})
@click.argument('args', nargs=-1, type=click.UNPROCESSED)
def curate(args):
    """Not implemented yet."""
    raise click.ClickException('curate' + ': not implemented yet')
