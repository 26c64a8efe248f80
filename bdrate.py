"""BD-rate tables and R-D plots: ``python bdrate.py CURVES... --reference REF [--out DIR]``.

A thin entrypoint; the work is done in ``hpcm.eval.report``.
"""

from hpcm.eval.report import main

if __name__ == "__main__":
    raise SystemExit(main())
