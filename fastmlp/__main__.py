"""``python -m fastmlp ...`` is the ``fastmlp`` command."""
import sys

from .cli import main

sys.exit(main())
