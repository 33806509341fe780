"""``asynclog query DATASET SQL``: SQL over an exported dataset with DuckDB."""

from __future__ import annotations

import os
import sys

from asynclog._tables import need
from asynclog.cli.exits import NOT_FOUND, USAGE
from asynclog.tools.dataset import connect, is_dataset


def cmd_query(args) -> int:
    """Run one SQL statement over a dataset that asynclog export DIR --dataset OUT wrote, with one view per
    table (runs, events, sequences, importance, tokens); print the result as a text table or CSV. Exit 0; 3 for
    a folder of logs rather than a dataset, or a statement DuckDB rejects or cannot run (a value it cannot
    cast, error()), said in one line; 4 when the folder does not exist."""

    if not os.path.isdir(args.dataset):
        print(f"asynclog query: {args.dataset}: no such folder", file=sys.stderr)
        return NOT_FOUND
    if not is_dataset(args.dataset):
        print(f"asynclog query: {args.dataset} is not a dataset; export its runs first: "
              f"asynclog export {args.dataset} --dataset OUT, then asynclog query OUT \"SELECT ...\"", file=sys.stderr)
        return USAGE
    duckdb = need("duckdb", "query")
    try:  # DuckDB runs a statement lazily: a value it cannot cast fails in fetchall, not in sql
        result = connect(args.dataset).sql(args.sql)
        headers, rows = (result.columns, result.fetchall()) if result is not None else (None, None)
    except duckdb.Error as exc:
        print(f"asynclog query: {str(exc).splitlines()[0]}", file=sys.stderr)
        return USAGE
    if headers is not None:
        _print(headers, rows, args.csv)
    return 0


def _print(headers: list[str], rows: list[tuple], as_csv: bool) -> None:
    if as_csv:
        import csv

        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(headers)
        writer.writerows(rows)
    else:
        from asynclog.tools._table import render

        print(render(list(headers), [list(r) for r in rows]))


def register(subparsers) -> None:
    """Add ``query`` to the console script's subcommands."""
    p = subparsers.add_parser("query", help="SQL (DuckDB) over a dataset written by asynclog export DIR --dataset",
                              description=cmd_query.__doc__)
    p.add_argument("dataset", help="the dataset's folder (OUT of asynclog export DIR --dataset OUT)")
    p.add_argument("sql", help='one statement, e.g. "SELECT checkpoint, count(*) FROM tokens GROUP BY 1"')
    p.add_argument("--csv", action="store_true", help="print CSV instead of a text table")
    p.set_defaults(func=cmd_query)
