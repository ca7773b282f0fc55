#!/usr/bin/env python
"""One command from competition data to a validated submission and a report, from a checkout.

    python run_pipeline.py                      # the built-in demo, end to end, on CPU
    python run_pipeline.py --config ccp --data-dir ../shared/data/ccp

The same as the installed `fashion-stack run` (its flags: `python run_pipeline.py --help`); the
pipeline itself is fashion_stack.pipeline.
"""
import sys

from fashion_stack.pipeline import main

if __name__ == "__main__":
    sys.exit(main())
