"""docs/DATASET.md's Spark line, run as written on a real local Spark (the long suite: ``pytest --full``).

Skipped with a reason without --full (a Spark session takes tens of seconds to start), without Java, or
without pyspark (``pip install 'asynclog[spark]'``)."""

from __future__ import annotations

import os
import shutil
from collections import Counter

import pytest

from test_dataset import NUMBER_LIKE, asynclog_cli, export_to, log_ranks, one_sequence, tokens_per_partition


class Spark:
    """A local Spark session started in ``folder``: its JVM resolves relative paths there, whatever the Python
    process's current folder, so the documented ``data/`` is ``folder/data``, a link to a test's dataset."""

    def __init__(self, session, folder):
        self.session, self.folder = session, folder

    def read(self, dataset, table: str = "tokens"):
        link = self.folder / "data"
        if link.is_symlink():
            link.unlink()
        link.symlink_to(dataset, target_is_directory=True)
        return documented_read(self.session, table)


@pytest.fixture(scope="module")
def spark(request, tmp_path_factory):
    if not request.config.getoption("--full"):
        pytest.skip("Spark runs in the long suite: pytest --full")
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("Spark needs Java (17 or later): none on PATH and no JAVA_HOME")
    sql = pytest.importorskip("pyspark.sql", reason="Spark needs pyspark: pip install 'asynclog[spark]'")
    folder, was = tmp_path_factory.mktemp("spark"), os.getcwd()
    os.chdir(folder)  # where the JVM starts
    try:
        session = (sql.SparkSession.builder.master("local[1]").appName("asynclog-dataset")
                   .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "1").getOrCreate())
    finally:
        os.chdir(was)
    session.sparkContext.setLogLevel("ERROR")
    yield Spark(session, folder)
    session.stop()


def documented_read(spark, table: str = "tokens"):
    """docs/DATASET.md's Spark line, as written (``data/`` is relative to where Spark started)."""
    spark.conf.set("spark.sql.sources.partitionColumnTypeInference.enabled", "false")
    return spark.read.option("mergeSchema", "true").parquet(f"data/table={table}")


def test_spark_reads_every_token_of_every_run_and_rank_with_its_columns(spark, tmp_path):
    logs = tmp_path / "logs"
    done = asynclog_cli("demo", "--size", "tiny", "--level", "debug", "--checkpoints", "2", "--out", str(logs))
    assert done.returncode == 0, done.stderr
    log_ranks(logs)
    assert asynclog_cli("export", str(logs), "--dataset", str(tmp_path / "data")).returncode == 0
    want = tokens_per_partition(logs)
    rows = spark.read(tmp_path / "data").select("checkpoint", "rank", "token_logprobs", "token_texts").collect()
    counts, sums = Counter(), Counter()
    for row in rows:
        counts[(row.checkpoint, int(row["rank"]))] += 1
        sums[(row.checkpoint, int(row["rank"]))] += row.token_logprobs or 0.0
    assert dict(counts) == {key: n for key, (n, _) in want.items()}
    for key, (_, total) in want.items():
        assert sums[key] == pytest.approx(total, rel=1e-5)
    # token texts: the demo's debug runs have them, the rank folder's runs not (mergeSchema keeps the column)
    assert sum(row.token_texts is not None for row in rows) == sum(
        n for (checkpoint, _), (n, _) in want.items() if checkpoint.startswith("step_"))


def test_spark_keeps_checkpoints_that_look_like_numbers_apart_as_strings(spark, tmp_path):
    for k, name in enumerate(NUMBER_LIKE):
        one_sequence(tmp_path / "logs" / f"{name}.alog", tokens=k + 1)
    assert export_to(tmp_path / "logs", tmp_path / "data").returncode == 0
    frame = spark.read(tmp_path / "data")
    rows = frame.select("checkpoint", "rank").collect()
    assert dict(frame.dtypes)["checkpoint"] == "string"
    want = {(name, "0"): k + 1 for k, name in enumerate(NUMBER_LIKE)}
    assert dict(Counter((r.checkpoint, r["rank"]) for r in rows)) == want
