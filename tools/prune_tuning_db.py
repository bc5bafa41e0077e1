"""Copy a MetaSchedule tuning database keeping only the fastest record(s) of each kernel.

This is how the committed databases in compile/tvm/tuning_db/ are made from a tuning
folder: every compile of a zoo model opens its database, and opening one parses every record
(LitePose's tuning folder, 1409 records: 32 s; pruned to 81: 3.6 s), while applying one needs
only the best record per kernel.

    python tools/prune_tuning_db.py /tmp/tune/litepose compile/tvm/tuning_db/litepose
    python tools/prune_tuning_db.py DB OUT --keep 4      # keep more for a later --tune to start from
"""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="tuning database folder (database_workload.json + database_tuning_record.json)")
    parser.add_argument("dst", help="folder to write (replaced atomically)")
    parser.add_argument("--keep", type=int, default=1, help="records kept per kernel, fastest first (default 1)")
    args = parser.parse_args(argv)

    from edgekit.compile.tvm import tuning
    from edgekit.errors import EdgekitError

    try:
        workloads, records = tuning.prune_database(args.src, args.dst, keep=args.keep)
    except EdgekitError as exc:
        print(f"prune_tuning_db: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.dst}: {workloads} kernels, {records} records")
    return 0


if __name__ == "__main__":
    sys.exit(main())
