"""The after-the-run tools, as library functions: ``ls``/``show``/``sweep`` and ``scan`` (analysis), ``diff``,
``export`` and the Parquet dataset, ``plot``, and ``import`` of earlier JSON logs.

Every tool reads what is on disk through ``asynclog._ondisk`` and the reader; the console script
(``asynclog.cli``) wraps them, and none of them imports it.
"""
