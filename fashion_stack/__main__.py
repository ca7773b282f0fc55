"""`python -m fashion_stack run ...`: the same as the `fashion-stack` command."""
import sys

from fashion_stack.cli import main

sys.exit(main())
