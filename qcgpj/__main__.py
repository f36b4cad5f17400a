"""``python -m qcgpj`` is the ``qcgpj`` command."""
from .cli import main

main()
