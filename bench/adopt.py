#!/usr/bin/env python3
"""How long adopting the Go service's table takes, on a throwaway PostgreSQL.

    python bench/adopt.py                 # 100,000 old rows
    python bench/adopt.py --rows 1000000

Builds the Go service's table (gorm's DDL) and fills it as the Go service
wrote it: lib/pq array literals, one row in ten with NULL tags (a PUT
without tags), one in a hundred with NULL timestamps. Then runs
`imagelist --migrate` on it, as an upgrade would, and prints the time the
adoption itself logged and the wall time of the whole command (interpreter
start and connecting included).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import psycopg2
import psycopg2.extras

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from storage.legacy import GO_SERVICE_DDL  # noqa: E402

from pgcluster import PgCluster, create_database  # noqa: E402

FILL = """
INSERT INTO images
SELECT CASE WHEN n %% 100 = 0 THEN NULL ELSE now() - n * interval '1 second' END,
       CASE WHEN n %% 100 = 0 THEN NULL ELSE now() - n * interval '1 second' END,
       encode(sha256(n::text::bytea), 'hex'),
       'registry.example.com/team' || (n %% 50) || '/app' || (n %% 2000),
       CASE WHEN n %% 10 = 0 THEN NULL ELSE '{"latest","v' || n || '","build-' || n || '"}' END
FROM generate_series(1, %(rows)s) AS n
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    cluster = PgCluster().init()
    cluster.start()
    try:
        cluster.wait_ready()
        url = create_database(cluster.url(), "imagelist_adopt")
        conn = psycopg2.connect(url)
        with conn, conn.cursor() as cur:
            cur.execute(GO_SERVICE_DDL)
            cur.execute(FILL, {"rows": args.rows})
        conn.close()
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, str(ROOT / "imagelist.py"), "--migrate", "--database-url", url],
            capture_output=True,
            text=True,
            check=False,
        )
        wall = time.monotonic() - started
        if done.returncode != 0:
            print(done.stdout, done.stderr, file=sys.stderr)
            return 1
        adopted = next(
            entry
            for entry in map(json.loads, done.stdout.splitlines())
            if entry["event"] == "legacy_schema_adopted"
        )
        print(
            f"adopted {adopted['rows']:,} rows in {adopted['seconds']:.2f} s "
            f"(imagelist --migrate: {wall:.2f} s wall)"
        )
    finally:
        cluster.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
