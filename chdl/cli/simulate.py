"""Placeholder: this stage is not implemented yet (exits non-zero)."""

import click


@click.command('simulate', context_settings={'ignore_unknown_options': True})
@click.argument('args', nargs=-1, type=click.UNPROCESSED)
def simulate(args):
    """Not implemented yet."""
    raise click.ClickException('simulate' + ': not implemented yet')
