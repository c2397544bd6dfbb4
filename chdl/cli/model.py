"""Placeholder: this stage is not implemented yet (exits non-zero)."""

import click


@click.command('model-info', context_settings={'ignore_unknown_options': True})
@click.argument('args', nargs=-1, type=click.UNPROCESSED)
def model_info(args):
    """Not implemented yet."""
    raise click.ClickException('model-info' + ': not implemented yet')
