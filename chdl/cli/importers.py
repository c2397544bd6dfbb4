"""Placeholder: this stage is not implemented yet (exits non-zero)."""

import click


@click.command('import', context_settings={'ignore_unknown_options': True})
@click.argument('args', nargs=-1, type=click.UNPROCESSED)
def import_(args):
    """Not implemented yet."""
    raise click.ClickException('import' + ': not implemented yet')
